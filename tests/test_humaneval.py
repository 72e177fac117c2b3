"""HumanEval as DeepSeek's scripts build it: prompts, the cut of base completions, the code taken from instruct
answers, and the programs they make (the canonical solutions pass through both)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dscbatch.executor.evaluation import run_programs
from dscbatch.executor.extraction import IMPORT_HELPER, instruct_code, program, truncate
from dscbatch.executor.humaneval import default_params, job_lines
from dscbatch.executor.problems import load_problems
from dscbatch.executor.sandbox import Sandbox
from dscbatch.jobs.requests import Params, Verify

from .test_pipeline import _processes_mentioning

PROMPT = ('from typing import List\n\n\ndef below_zero(operations: List[int]) -> bool:\n'
          '    """ True if the balance falls below zero.\n    >>> below_zero([1, -2])\n    True\n    """\n')
BODY = "    balance = 0\n    for op in operations:\n        balance += op\n        if balance < 0:\n" \
       "            return True\n    return False\n"
MESSAGE = ("Please continue to complete the function. You are not allowed to modify the given code and do the "
           "completion only. Please return all completed function in a codeblock. Here is the given code to do "
           "completion:\n```python\n" + PROMPT.strip() + "\n```")


def test_job_lines_are_deepseeks_prompts() -> None:
    problems = list(load_problems().values())
    base = next(job_lines(problems, "base"))
    assert base["type"] == "completion" and base["prompt"] == problems[0].prompt.strip()
    assert base["verify"]["extract"] == "humaneval_base" and base["verify"]["prompt"] == problems[0].prompt
    assert base["verify"]["tests"] == problems[0].test + "\ncheck(has_close_elements)"
    instruct = next(job_lines([problems[3]], "instruct"))
    assert instruct["type"] == "chat" and instruct["verify"]["extract"] == "humaneval_instruct"
    assert instruct["messages"] == [{"role": "user", "content": MESSAGE.replace(PROMPT.strip(),
                                                                                problems[3].prompt.strip())}]
    assert default_params("base", Params()) == Params(temperature=0.0, max_tokens=512, n=1, stop=[
        "\ndef", "\nclass", "\nif", "\n#", "\nprint"])
    assert default_params("instruct", Params(max_tokens=16)) == Params(temperature=0.0, max_tokens=16, n=1,
                                                                       stop=[])
    twice = list(job_lines(problems[:2], "base", samples=2))
    assert [(line["id"], line["metadata"]) for line in twice] == [
        (f"HumanEval/{i}#{k}", {"task_id": f"HumanEval/{i}"}) for i in range(2) for k in range(2)]


def test_base_completions_are_cut_at_deepseeks_stop_words() -> None:
    assert truncate(BODY + "\n\ndef other():\n    pass\n") == BODY + "\n"
    assert truncate(BODY + "\nif __name__ == '__main__':\n    main()") == BODY
    assert truncate(BODY + "\n# test\nprint(1)") == BODY
    assert truncate("    x = 1\n    if x:\n        print(x)\n") == "    x = 1\n    if x:\n        print(x)\n"
    spec = Verify(tests="check()", prompt=PROMPT, extract="humaneval_base")
    assert program(spec, "\n" + BODY + "\nprint(below_zero([1]))") == (
        IMPORT_HELPER + PROMPT + "\n" + "\n" + BODY + "\ncheck()\n")


def test_instruct_answers_give_the_code_block_under_the_prompts_lines() -> None:
    answer = ("Sure:\n```python\nfrom typing import List\n\ndef below_zero(operations: List[int]) -> bool:\n"
              + BODY + "\nprint(below_zero([1, -2]))\n```\nand a second block:\n```python\nx = 1\n```")
    code = instruct_code(PROMPT, answer)
    assert code == ("from typing import List\ndef below_zero(operations: List[int]) -> bool:\n" + BODY
                    + "\nprint(below_zero([1, -2]))\n\n")
    # Without a python block the answer is kept after the prompt, as DeepSeek's script does.
    assert instruct_code(PROMPT, "no code here") == PROMPT + "\nno code here"


def test_canonical_solutions_pass_through_both_extractions() -> None:
    problems = load_problems()
    programs = []
    for problem in problems.values():
        tests = problem.test + f"\ncheck({problem.entry_point})"
        assert problem.canonical_solution is not None
        programs.append(program(Verify(tests=tests, prompt=problem.prompt, extract="humaneval_base"),
                                "\n" + problem.canonical_solution))
        answer = f"Here it is:\n```python\n{problem.prompt}{problem.canonical_solution}```\n"
        programs.append(program(Verify(tests=tests, prompt=problem.prompt, extract="humaneval_instruct"), answer))
    verdicts = run_programs(Sandbox(), programs)
    failed = [(name, verdict.error[-300:]) for name, verdict in zip(
        [f"{task} {mode}" for task in problems for mode in ("base", "instruct")], verdicts, strict=True)
        if not verdict.passed]
    assert failed == []


# Its own cluster's engine starts inside the command (a minute here, several on a loaded machine): the same
# limit as the command's own.
@pytest.mark.timeout(900)
def test_eval_local_generates_and_judges_with_its_own_cluster(tiny_model: Path, tmp_path: Path) -> None:
    problems = tmp_path / "three.jsonl"
    problems.write_text("".join(problem.model_dump_json() + "\n" for problem in list(load_problems().values())[:3]))
    report_path = tmp_path / "report.json"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "dscbatch.cli.main", "eval", "humaneval", "--model",
                             str(tiny_model), "--local", "--problems", str(problems), "--prompt-style", "base",
                             "-p", "max_tokens=8", "--report", str(report_path)],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "3 problems, 1 sample each, base prompts, max_tokens 8" in result.stderr
    report = json.loads(report_path.read_text())
    assert (report["samples"], sum(report["verdicts"].values()), report["pass_at_k"]) == (3, 3, {"pass@1": 0.0})
    port = result.stderr.split("127.0.0.1:")[1].split(",")[0]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("dscbatch-run-", "dscbatch-eval-"))]
    assert not _processes_mentioning(f"127.0.0.1:{port}")

"""The real-model tier: what only trained weights can show (scripts/fetch_model.py's Qwen2.5-Coder-0.5B-Instruct).

One worker (one engine) and one job for the whole tier, a few short requests (a 0.5B model makes about 15-60
tokens/s on 2 shared cores): a chat answer's code passes its tests in the sandbox, json_schema outputs validate,
HumanEval's instruct extraction of real answers gives programs that run, and a greedy answer's logprobs are the
top-1 at every step.
"""

from __future__ import annotations

import ast
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from dscbatch.core.settings import Settings
from dscbatch.executor.extraction import instruct_code
from dscbatch.executor.humaneval import job_lines
from dscbatch.executor.problems import load_problems
from dscbatch.jobs.store import JobStore
from dscbatch.workers.embedded import stop_process

from .conftest import REAL_MODEL, REAL_MODEL_ABSENT, start_executor, start_worker
from .test_pipeline import dscbatch, read_jsonl

pytestmark = [pytest.mark.real_model, pytest.mark.skipif(not (REAL_MODEL / "dscbatch-source.json").is_file(),
                                                         reason=REAL_MODEL_ABSENT)]

PALINDROME_TESTS = ("assert is_palindrome('level')\nassert is_palindrome('')\nassert not is_palindrome('ab')\n"
                    "assert is_palindrome('abba')\n")
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
# HumanEval problems the model answers with a short function (a few hundred tokens at most).
HUMANEVAL = ("HumanEval/0", "HumanEval/2", "HumanEval/4")


def _lines() -> list[dict[str, Any]]:
    problems = load_problems()
    humaneval = [{**line, "params": {"max_tokens": 320}}
                 for line in job_lines([problems[task] for task in HUMANEVAL], "instruct")]
    schema = {"type": "json_schema", "json_schema": {"name": "Person", "schema": PERSON}}
    return [
        {"id": "palindrome", "messages": [{"role": "user", "content": (
            "Write a Python function `is_palindrome(s: str) -> bool` that says whether s reads the same "
            "backwards. Answer with one ```python code block only.")}],
         "params": {"max_tokens": 200, "temperature": 0},
         "verify": {"tests": PALINDROME_TESTS, "extract": "code_block"}},
        *({"id": f"person-{n}", "messages": [{"role": "user", "content": f"Invent person number {n} as JSON."}],
           "params": {"max_tokens": 48, "temperature": 0, "response_format": schema}} for n in (1, 2)),
        {"id": "greedy", "prompt": "def square(x):\n    return", "params": {"max_tokens": 12, "temperature": 0,
                                                                           "logprobs": 5}},
        *humaneval,
    ]


@pytest.fixture(scope="module")
def real_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"sandbox_timeout": 10.0, "executor_concurrency": 2})


@pytest.fixture(scope="module")
def real_results(real_settings: Settings, store: JobStore,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """The tier's one job, run to the end (verdicts in) on its own worker and executor; results by id."""
    directory = tmp_path_factory.mktemp("real-model")
    worker = start_worker(real_settings, store, REAL_MODEL, directory / "worker.log")
    executor: subprocess.Popen[bytes] | None = None
    try:
        executor = start_executor(real_settings, store, directory / "executor.log")
        path, out = directory / "in.jsonl", directory / "out.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in _lines()), encoding="utf-8")
        submitted = dscbatch(real_settings, "submit", str(path), "--model", str(REAL_MODEL), "--wait")
        dscbatch(real_settings, "results", submitted.stdout.strip().splitlines()[-1], "-o", str(out))
        yield {record["id"]: record for record in read_jsonl(out)}
    finally:
        for process in (executor, worker):
            if process is not None:
                stop_process(process)


def test_a_chat_answers_code_passes_its_tests_in_the_sandbox(real_results: dict[str, dict[str, Any]]) -> None:
    record = real_results["palindrome"]
    assert record["error"] is None and record["outputs"][0]["finish_reason"] == "stop"
    verdict = record["verification"]["verdicts"][0]
    assert verdict["status"] == "passed", verdict
    assert "def is_palindrome" in verdict["program"]


def test_json_schema_outputs_validate_against_their_schema(real_results: dict[str, dict[str, Any]]) -> None:
    for n in (1, 2):
        text = real_results[f"person-{n}"]["outputs"][0]["text"]
        jsonschema.validate(json.loads(text), PERSON)


def test_humaneval_instruct_extraction_of_real_answers_gives_programs_that_run(
        real_results: dict[str, dict[str, Any]]) -> None:
    problems = load_problems()
    statuses = []
    for task in HUMANEVAL:
        record = real_results[task]
        answer = record["outputs"][0]["text"]
        assert "```python" in answer, answer
        code = instruct_code(problems[task].prompt, answer)
        ast.parse(code)  # the extracted function is whole Python
        verdict = record["verification"]["verdicts"][0]
        # It ran: a wrong answer fails an assertion, never a NameError or SyntaxError from the extraction.
        assert not any(kind in (verdict.get("error") or "") for kind in ("SyntaxError", "NameError",
                                                                        "IndentationError")), verdict
        statuses.append(verdict["status"])
    assert statuses.count("passed") >= 2, statuses


def test_a_greedy_answers_logprobs_are_the_top_one_at_every_step(real_results: dict[str, dict[str, Any]]) -> None:
    output = real_results["greedy"]["outputs"][0]
    steps = output["logprobs"]
    assert len(steps) == output["completion_tokens"] == 12
    for step in steps:
        best = step["top_logprobs"][0]
        assert (step["token"], step["logprob"]) == (best["token"], best["logprob"]), step
        assert step["logprob"] == max(top["logprob"] for top in step["top_logprobs"])

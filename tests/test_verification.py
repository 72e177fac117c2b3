"""Verification by the executor pool: a real `dscbatch executor` judges stored results once each, nothing is
lost when the worker that stored them died before queueing their verification, and `eval humaneval` runs
end to end through the shared worker."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dscbatch.core.celery_app import enqueue_verifications, executor_queue, make_app
from dscbatch.core.settings import Settings
from dscbatch.jobs import parquet
from dscbatch.jobs.requests import Verify
from dscbatch.jobs.results import ItemInfo, Output, TokenLogprob, result_line
from dscbatch.jobs.store import JobStatus, JobStore, ResultEntry
from dscbatch.workers.embedded import stop_process

from .conftest import start_executor
from .test_pipeline import dscbatch, read_jsonl

# The sweeper queues again what waited a visibility timeout (10 s here) and sweeps every 10 s.
SETTLE_SECONDS = 150
TESTS = "assert f() == 1\n"
GOOD = "def f():\n    return 1\n"
# As a request with logprobs gets them: each token's, and the most likely ones at its step.
LOGPROBS = (TokenLogprob("def", -0.25, (("def", -0.25), ("class", -1.5))), TokenLogprob(" f", -0.5, ()))
WRONG = "def f():\n    return 2\n"


@pytest.fixture(scope="module")
def executor_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"visibility_timeout": 10, "sandbox_timeout": 3.0, "executor_concurrency": 2})


@pytest.fixture(scope="module")
def executor(executor_settings: Settings, store: JobStore,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    process = start_executor(executor_settings, store, tmp_path_factory.mktemp("executor") / "executor.log")
    yield process
    stop_process(process)


def stored_job(store: JobStore, outputs: list[list[str]]) -> str:
    """A job whose results a worker stored (each to be verified against TESTS) and then died: nothing queued."""
    job_id = f"exec-{uuid.uuid4().hex[:8]}"
    store.create_job(job_id, {"model": "m", "queue": "q", "created": time.time(), "total": len(outputs),
                              "shards": 0})
    store.save_verify_specs(job_id, {i: Verify(tests=TESTS).model_dump_json() for i in range(len(outputs))})
    store.record(job_id, [
        ResultEntry(i, result_line(ItemInfo(i, f"item{i}", "completion", False, None), model="m", job_id=job_id,
                                   created=0, outputs=[Output(text, "stop", 1, LOGPROBS) for text in texts]),
                    "done",
                    verify=True)
        for i, texts in enumerate(outputs)])
    return job_id


def wait_for_verdicts(store: JobStore, job_id: str) -> JobStatus:
    deadline = time.monotonic() + SETTLE_SECONDS
    while not (status := store.status(job_id)).settled:
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    return status


def test_results_stored_by_a_worker_that_died_are_verified_and_filtered(
        executor: subprocess.Popen[bytes], executor_settings: Settings, store: JobStore, tmp_path: Path) -> None:
    outputs = [[GOOD], [WRONG, GOOD], ["import os\nwhile True:\n    os.fork()\n"], ["while True:\n    pass\n"],
               ["block = bytearray(16 << 30)\n"]]
    job_id = stored_job(store, outputs)
    status = store.status(job_id)
    assert (status.pending, status.to_verify, status.verifying, status.settled) == (0, 5, 5, False)
    assert status.state == "running"

    status = wait_for_verdicts(store, job_id)
    assert (status.state, status.verified, status.verified_samples, status.passed_samples) == ("completed", 5, 6, 2)
    out = tmp_path / "all.jsonl"
    dscbatch(executor_settings, "results", job_id, "-o", str(out))
    records = read_jsonl(out)
    assert [[verdict["status"] for verdict in record["verification"]["verdicts"]] for record in records] == [
        ["passed"], ["failed", "passed"], ["failed"], ["timeout"], ["memory"]]
    assert records[1]["verification"]["verdicts"][0]["program"] == WRONG + "\n" + TESTS + "\n"
    assert records[1]["verification"]["verdicts"][0]["error"].rstrip().endswith("AssertionError")
    # Parquet keeps every field of every line: verdicts and logprobs too.
    table = tmp_path / "all.parquet"
    dscbatch(executor_settings, "results", job_id, "-o", str(table))
    assert list(parquet.read_records(str(table))) == records
    assert records[0]["outputs"][0]["logprobs"][0]["top_logprobs"][1] == {"token": "class", "logprob": -1.5}

    passed = tmp_path / "passed.jsonl"
    dscbatch(executor_settings, "results", job_id, "-o", str(passed), "--passed-only")
    kept = read_jsonl(passed)
    assert [record["id"] for record in kept] == ["item0", "item1"]
    assert [output["text"] for output in kept[1]["outputs"]] == [GOOD]
    assert executor.poll() is None


def test_a_verification_delivered_twice_stores_one_verdict_also_once_the_first_left_redis(
        executor: subprocess.Popen[bytes], executor_settings: Settings, store: JobStore, tmp_path: Path) -> None:
    job_id = stored_job(store, [[GOOD]] * 6)
    assert not store.client.exists(f"{store.job_key(job_id)}:verify")  # the tests are in the work folder
    app = make_app(executor_settings)
    for _ in range(2):
        enqueue_verifications(app, executor_settings.key_prefix, job_id, list(range(6)))
    status = wait_for_verdicts(store, job_id)
    assert (status.verified, status.verified_samples, status.passed_samples) == (6, 6, 6)
    assert store.client.zcard(store.waiting_key) == 0 or all(
        not member.startswith(job_id.encode()) for member in store.client.zrange(store.waiting_key, 0, -1))
    records = [json.loads(record or "null") for record in store.iter_verdicts(job_id, 6)]
    assert [(record["passed"], record["samples"]) for record in records] == [(1, 1)] * 6

    # A worker moves the records to the work folder: Redis keeps none, the results still carry every one.
    store.flush_verdicts(job_id)
    assert store.client.hlen(f"{store.job_key(job_id)}:verdicts") == 0
    out = tmp_path / "results.jsonl"
    dscbatch(executor_settings, "results", job_id, "-o", str(out))
    assert [record["verification"] for record in read_jsonl(out)] == records
    # The executor gets the same items again (a redelivery, another executor's sweep): nothing is stored twice.
    queue = executor_queue(executor_settings.key_prefix)
    enqueue_verifications(app, executor_settings.key_prefix, job_id, list(range(6)))
    deadline = time.monotonic() + 30
    while store.client.llen(queue) > 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1)  # taken: each is refused at once (the item has its verdict)
    assert not store.record_verdict(job_id, 0, json.dumps({"passed": 0, "samples": 1, "verdicts": []}), 1, 0)
    status = store.status(job_id)
    assert (status.verified, status.verified_samples, status.passed_samples) == (6, 6, 6)
    assert store.client.hlen(f"{store.job_key(job_id)}:verdicts") == 0
    assert [json.loads(record or "null") for record in store.iter_verdicts(job_id, 6)] == records


@pytest.mark.engine
def test_eval_humaneval_generates_and_judges_every_sample(
        executor: subprocess.Popen[bytes], executor_settings: Settings, worker: object, tiny_model: Path,
        tmp_path: Path) -> None:
    report_path, results = tmp_path / "report.json", tmp_path / "results.jsonl"
    result = dscbatch(executor_settings, "eval", "humaneval", "--model", str(tiny_model), "-n", "2",
                      "-p", "max_tokens=16", "--report", str(report_path), "-o", str(results), timeout=280)
    assert "164 problems, 2 samples each, instruct prompts, max_tokens 16" in result.stderr
    report = json.loads(report_path.read_text())
    assert (report["problems"], report["samples"], sum(report["verdicts"].values())) == (164, 328, 328)
    assert report["pass_at_k"] == {"pass@1": 0.0}  # random weights
    assert "pass@1           0.000" in result.stdout
    assert "failed in the worker" not in result.stderr
    records = read_jsonl(results)
    assert [record["id"] for record in records] == [f"HumanEval/{i}#{k}" for i in range(164) for k in range(2)]
    assert all(record["error"] is None and len(record["verification"]["verdicts"]) == 1 for record in records)
    first = records[0]["verification"]["verdicts"][0]
    assert first["status"] != "passed" and "def has_close_elements" in first["program"]
    assert first["program"].rstrip().endswith("check(has_close_elements)")

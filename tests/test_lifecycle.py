"""A job's life after it settles: its results file in its output folder, Redis emptied of its results and
shards, retry after that, delete, and retention."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from dscbatch.core.errors import SettingsError
from dscbatch.core.settings import Settings
from dscbatch.jobs import finalize, parquet, retention
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import SubmitOptions, submit_job

from .test_pipeline import EXAMPLES, dscbatch, input_ids, read_jsonl


def job_keys(store: JobStore, job_id: str) -> list[str]:
    """Every Redis key of the job (its record, results, shards, counters)."""
    return sorted(key.decode() for key in store.client.scan_iter(f"{store.job_key(job_id)}*", count=1000))


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.engine
def test_a_settled_job_is_finalized_into_its_output_folder_and_leaves_redis(
        settings: Settings, store: JobStore, worker: Any, tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    submitted = dscbatch(settings, "submit", str(EXAMPLES), "--model", str(tiny_model), "--echo-prompt", "--wait",
                         "--output", str(folder))
    job_id = submitted.stdout.split()[-1]
    results_file = folder / "results.jsonl"
    assert f"results in {results_file}" in submitted.stderr
    lines = results_file.read_text(encoding="utf-8").splitlines()
    assert [r.get("custom_id") or r.get("id") for r in map(json.loads, lines)] == input_ids(EXAMPLES)
    # Nothing staged left beside it; the manifest, written last, describes it.
    assert sorted(path.name for path in folder.iterdir()) == ["manifest.json", "results.jsonl"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["job"], manifest["lines"], manifest["results"]["bytes"], manifest["parts"]) == (
        job_id, len(lines), results_file.stat().st_size, None)
    status = json.loads(dscbatch(settings, "status", job_id, "--json").stdout)
    assert (status["state"], status["output_url"], status["results_url"]) == ("completed", str(folder),
                                                                              str(results_file))
    assert status["finalized"] >= status["finished"]
    assert f"results file: {results_file} (written" in dscbatch(settings, "status", job_id).stdout
    # Only the record is left in Redis: no results, no shard, no counters of attempts.
    assert job_keys(store, job_id) == [store.job_key(job_id)]
    assert store.status(job_id).results_url == str(results_file)
    # `results -o` reads the results file now, and writes the same lines.
    again = tmp_path / "again.jsonl"
    dscbatch(settings, "results", job_id, "-o", str(again))
    assert again.read_text(encoding="utf-8").splitlines() == lines


@pytest.mark.engine
def test_without_an_output_folder_results_stay_in_the_work_folder_and_shards_leave(
        settings: Settings, store: JobStore, worker: Any, tiny_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"n{i}", "prompt": f"def n{i}():", "params": {"max_tokens": 2},
                                        "metadata": {"n": i}}) + "\n" for i in range(10)))
    job_id = dscbatch(settings, "submit", str(path), "--model", str(tiny_model), "--wait").stdout.split()[-1]
    status = store.status(job_id)
    assert (status.shards, status.output_url, status.results_url) == (3, None, None)
    # Redis holds the names of the committed parts, the results themselves are in the work folder; every
    # shard's marker left Redis when its last item got a result (payloads stay in the work folder with the job).
    wait_for(lambda: job_keys(store, job_id) == sorted([store.job_key(job_id), f"{store.job_key(job_id)}:parts"]),
             30, "the last shard to leave Redis")
    assert len(list(Path(store.work.job(job_id), "shards").iterdir())) == 3
    out = tmp_path / "out.jsonl"
    dscbatch(settings, "results", job_id, "-o", str(out))
    results = read_jsonl(out)
    assert [r["id"] for r in results] == input_ids(path)
    dscbatch(settings, "results", job_id, "-o", str(tmp_path / "out.parquet"))
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [row["id"] for row in rows] == input_ids(path)
    assert [json.loads(row["metadata"]) for row in rows] == [{"n": i} for i in range(10)]
    assert list(parquet.read_records(str(tmp_path / "out.parquet"))) == results  # every field, as in the JSONL


@pytest.mark.engine
def test_retry_after_finalization_runs_the_failed_items_and_writes_the_file_again(
        settings: Settings, store: JobStore, worker: Any, tiny_model: Path, tmp_path: Path) -> None:
    # min_tokens above max_tokens passes submit but the worker refuses it (vLLM's sampling parameters): a
    # worker-side, per-item failure.
    path = tmp_path / "fails.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in [
        {"id": "ok1", "prompt": "a", "params": {"max_tokens": 2}},
        {"id": "bad", "prompt": "b", "params": {"max_tokens": 2, "min_tokens": 5}},
        {"id": "ok2", "prompt": "c", "params": {"max_tokens": 2}}]))
    folder = tmp_path / "out"
    waited = dscbatch(settings, "submit", str(path), "--model", str(tiny_model), "--wait", "-o", str(folder),
                      check=False)
    assert waited.returncode == 3
    job_id = waited.stdout.split()[-1]
    first = store.status(job_id)
    assert first.finalized is not None and job_keys(store, job_id) == sorted(
        [store.job_key(job_id), f"{store.job_key(job_id)}:failed", f"{store.job_key(job_id)}:retry"])
    before = read_jsonl(folder / "results.jsonl")
    assert [r["id"] for r in before] == ["ok1", "bad", "ok2"] and before[1]["error"]["code"] == "invalid_request"
    retried = dscbatch(settings, "retry", job_id)
    assert f"job {job_id}: 1 failed items queued again" in retried.stdout
    wait_for(lambda: store.status(job_id).results_url is not None, 120, "the results file to be written again")
    status = store.status(job_id)
    assert (status.done, status.failed, status.total) == (2, 1, 3) and status.finalized > first.finalized  # type: ignore[operator]
    after = read_jsonl(folder / "results.jsonl")
    assert after[0] == before[0] and after[2] == before[2]  # kept from the first file
    assert after[1]["id"] == "bad" and "min_tokens" in after[1]["error"]["message"]  # the retry's own record
    assert job_keys(store, job_id) == sorted(
        [store.job_key(job_id), f"{store.job_key(job_id)}:failed", f"{store.job_key(job_id)}:retry"])


def _invalid_only_job(store: JobStore, deepseek_dir: Path, tmp_path: Path, **options: Any) -> str:
    """A job that settles at submission: every line is invalid, submitted with --skip-invalid."""
    path = tmp_path / "invalid.jsonl"
    path.write_text('{"id": "x1", "prompt": 1}\n{"id": "x2", "prompt": "ok", "params": {"max_tokens": -1}}\n')
    return submit_job(store, lambda queue, job, key: None, path,
                      SubmitOptions(model=str(deepseek_dir), skip_invalid=True, **options))


def test_a_job_settled_at_submission_is_finalized_by_housekeeping_and_its_file_outlives_retention(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    # A key prefix of its own: a retention sweep removes every expired job under its prefix, and the session's
    # Redis holds other tests' finished jobs.
    store = private_store
    job_id = _invalid_only_job(store, deepseek_dir, tmp_path, output_root=str(tmp_path / "all"))
    assert job_id in finalize.awaiting(store)
    assert store.status(job_id).output_url == str(tmp_path / "all" / job_id)
    assert finalize.finalize(store, job_id, "housekeeper-test")
    assert not finalize.finalize(store, job_id, "housekeeper-test")  # once
    results_file = tmp_path / "all" / job_id / "results.jsonl"
    assert [(r["id"], r["error"]["code"]) for r in read_jsonl(results_file)] == [
        ("x1", "invalid_request"), ("x2", "invalid_request")]
    finished = store.status(job_id).finished
    assert finished is not None
    assert retention.sweep(store, 3600, now=finished + 3599) == []
    assert retention.sweep(store, 3600, now=finished + 3601) == [job_id]
    assert job_keys(store, job_id) == [] and job_id not in store.job_ids()
    assert results_file.is_file()  # data at the user's folder is theirs


def test_a_finalization_claim_of_a_dead_worker_is_reaped_and_another_writes(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    store = private_store
    job_id = _invalid_only_job(store, deepseek_dir, tmp_path, output_url=str(tmp_path / "mine"))
    store.client.hset(store.keys.finalizing, job_id, "dead-worker")  # claimed; no heartbeat
    assert not finalize.finalize(store, job_id, "live-worker")
    assert job_id in finalize.reap_finalizers(store)
    assert finalize.finalize(store, job_id, "live-worker")
    assert len(read_jsonl(tmp_path / "mine" / "results.jsonl")) == 2


def test_delete_refuses_a_running_job_unless_cancelled(settings: Settings, store: JobStore, deepseek_dir: Path,
                                                       tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"def f{i}():"}) + "\n" for i in range(10)))
    queue = f"{settings.key_prefix}.{deepseek_dir.name}"  # no worker serves it: the job stays queued
    job_id = dscbatch(settings, "submit", str(path), "--model", str(deepseek_dir)).stdout.split()[-1]
    try:
        refused = dscbatch(settings, "delete", job_id, check=False)
        assert refused.returncode == 2
        assert refused.stderr.strip() == (f"error: job {job_id} is queued with 10 of 10 items pending: pass --cancel "
                                          "to cancel and delete it")
        assert len(job_keys(store, job_id)) == 1 + 3  # the record and three shards, untouched
        deleted = dscbatch(settings, "delete", job_id, "--cancel")
        assert f"job {job_id} deleted (cancelled: 0 done, 0 failed of 10)" in deleted.stdout
        assert job_keys(store, job_id) == [] and job_id not in store.job_ids()
        missing = dscbatch(settings, "delete", job_id, check=False)
        assert missing.returncode == 2 and f"no job {job_id!r}" in missing.stderr
    finally:
        store.client.delete(queue)


def test_finished_jobs_can_be_deleted(store: JobStore, settings: Settings, deepseek_dir: Path, tmp_path: Path) -> None:
    job_id = _invalid_only_job(store, deepseek_dir, tmp_path)
    deleted = dscbatch(settings, "delete", job_id)
    assert f"job {job_id} deleted (completed_with_errors: 0 done, 2 failed of 2)" in deleted.stdout
    assert job_keys(store, job_id) == []


@pytest.mark.parametrize(("value", "seconds"), [("7d", 604800), ("12h", 43200), ("30m", 1800), ("3600s", 3600),
                                                ("90", 90), ("2w", 1209600)])
def test_retention_takes_a_duration(value: str, seconds: int) -> None:
    assert Settings.from_env({"DSCBATCH_JOB_RETENTION": value}).job_retention == seconds


def test_retention_defaults_to_a_week_and_refuses_nonsense() -> None:
    assert Settings.from_env({}).job_retention == 7 * 86400
    with pytest.raises(SettingsError, match=r"^DSCBATCH_JOB_RETENTION: expected a duration such as 7d"):
        Settings.from_env({"DSCBATCH_JOB_RETENTION": "a week"})

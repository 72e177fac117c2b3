"""The data plane: shard payloads and results in the job's work folder, committed parts, Redis for coordination."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path

import pyarrow.dataset
import pytest

from dscbatch.core.errors import StorageError
from dscbatch.core.settings import Settings
from dscbatch.jobs import dataset, finalize, objectstore, output, parts
from dscbatch.jobs import store as store_module
from dscbatch.jobs.grouping import item_indices
from dscbatch.jobs.retrying import retry_failed
from dscbatch.jobs.store import JobStore, ResultEntry
from dscbatch.jobs.submission import SubmitOptions, submit_job
from dscbatch.workers.housekeeping import Housekeeper
from dscbatch.workers.repair import Repairer

from .conftest import worker_env
from .test_cli import cli


def _submit(store: JobStore, deepseek_dir: Path, tmp_path: Path, count: int, verify: bool = False,
            **options: object) -> str:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"def f{i}():",
                                        **({"verify": {"tests": f"assert f{i}() == {i}"}} if verify else {})}) + "\n"
                            for i in range(count)))
    return submit_job(store, lambda queue, job, key: None, path,
                      SubmitOptions(model=str(deepseek_dir), dedup=False, group_prefixes=False, **options))


def _line(index: int, text: str) -> str:
    return json.dumps({"id": f"q{index}", "text": text})


def _shard(store: JobStore, shard: str) -> tuple[list[dict[str, object]], list[int], dict[int, int]]:
    """A pending shard's items, the indices it answers (in shard order) and each index's position."""
    payload = store.load_shard(shard)
    assert payload is not None
    indices = [index for item in payload["items"] for index in item_indices(item)]
    return payload["items"], indices, {index: position for position, index in enumerate(indices)}


def _job_redis_bytes(store: JobStore, job_id: str) -> int:
    keys = [store.job_key(job_id), *store.keys.job_parts(job_id),
            *(store.shard_key(job_id, number) for number in range(store.status(job_id).shards))]
    return sum(store.client.memory_usage(key) or 0 for key in keys)


def test_a_second_copy_of_a_shard_commits_only_what_the_first_did_not(private_store: JobStore, deepseek_dir: Path,
                                                                     tmp_path: Path) -> None:
    store = private_store
    job_id = _submit(store, deepseek_dir, tmp_path, 4, shard_max_requests=4)
    shard = store.shard_key(job_id, 0)
    _, indices, positions = _shard(store, shard)
    first = [ResultEntry(index, _line(index, "first"), "done") for index in (0, 1)]
    second = [ResultEntry(index, _line(index, "second"), "done") for index in (1, 2, 3)]
    assert store.record(job_id, first, shard, positions) == 2
    assert store.record(job_id, second, shard, positions) == 2  # item 1 was the first copy's
    assert store.settled(shard, indices) == {0, 1, 2, 3}
    assert [json.loads(line)["text"] for _, line in store.results(job_id, 4) if line] == [
        "first", "first", "second", "second"]
    status = store.status(job_id)
    assert (status.done, status.state) == (4, "completed")
    # The refused part was deleted; the two committed ones are in the work folder.
    assert len(list(Path(store.work.job(job_id), "parts").iterdir())) == 2
    assert store.drop_shard(job_id, shard, indices) == []
    assert store.load_shard(shard) is None
    assert store.record(job_id, [ResultEntry(0, _line(0, "late"), "done")], shard, positions) == 0  # shard gone
    assert json.loads(next(store.results(job_id, 4))[1] or "")["text"] == "first"


def test_redis_holds_no_result_data_and_its_memory_does_not_grow_with_the_results(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    store = private_store
    items = 2000
    job_id = _submit(store, deepseek_dir, tmp_path, items, shard_max_requests=500)
    before = _job_redis_bytes(store, job_id)
    text = "x" * 1000  # results of about a kilobyte each: 2 MB in all
    for number in range(4):
        shard = store.shard_key(job_id, number)
        _, indices, positions = _shard(store, shard)
        for start in range(0, len(indices), 100):  # parts of 100 results, as store rounds write them
            store.record(job_id, [ResultEntry(index, _line(index, text), "done", 5, 7)
                                  for index in indices[start:start + 100]], shard, positions)
        assert store.drop_shard(job_id, shard, indices) == []
    after = _job_redis_bytes(store, job_id)
    status = store.status(job_id)
    assert (status.done, status.prompt_tokens, status.completion_tokens, status.state) == (
        items, 5 * items, 7 * items, "completed")
    assert after - before < 4096, f"{after - before} bytes of Redis for 2 MB of results"
    assert all(line is not None and text in line for _, line in store.results(job_id, items))


def test_the_merge_keeps_input_order_and_the_last_commit_across_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parts, "BUCKET_ITEMS", 8)
    stored = {"a": parts.encode((index, _line(index, "a")) for index in range(0, 30, 2)),
              "b": parts.encode((index, _line(index, "b")) for index in (29, 3, 17, 1)),
              "c": parts.encode([(3, _line(3, "c"))])}  # committed last: a retried item's new result
    merged = list(parts.merged(["a", "b", "c"], stored.__getitem__, 31, voided={17}))
    assert [index for index, _ in merged] == list(range(31))
    texts = {index: json.loads(line)["text"] for index, line in merged if line is not None}
    assert texts == {**{index: "a" for index in range(0, 30, 2)}, 1: "b", 3: "c", 29: "b"}


def test_a_corrupt_part_is_named_and_leaves_no_results_file_until_it_is_repaired(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    store = private_store
    job_id = _submit(store, deepseek_dir, tmp_path, 2, shard_max_requests=4, output_root=str(tmp_path / "out"))
    shard = store.shard_key(job_id, 0)
    store.record(job_id, [ResultEntry(index, _line(index, "ok"), "done") for index in (0, 1)], shard, {0: 0, 1: 1})
    (part,) = Path(store.work.job(job_id), "parts").iterdir()
    good = part.read_bytes()
    part.write_bytes(good[:-20])  # a torn object
    with pytest.raises(StorageError, match=f"result part {part} is corrupt"):
        finalize.finalize(store, job_id, "test")
    status = store.status(job_id)
    assert status.results_url is None and status.finalize_error is not None and part.name in status.finalize_error
    assert not (tmp_path / "out" / job_id / "results.jsonl").exists()
    part.write_bytes(good)  # the store serves it whole again: the next pass writes the file
    assert finalize.finalize(store, job_id, "test")
    assert store.status(job_id).finalize_error is None
    assert len((tmp_path / "out" / job_id / "results.jsonl").read_text().splitlines()) == 2


def test_an_unusable_work_folder_refuses_the_submission_in_one_line(private_settings: Settings,
                                                                   private_store: JobStore, deepseek_dir: Path,
                                                                   tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    settings = private_settings.model_copy(update={"work_url": str(blocker / "work")})
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "def f():"}\n')
    result = cli("submit", str(path), "--model", str(deepseek_dir), env=worker_env(settings))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and str(blocker / "work") in result.stderr, result.stderr
    assert private_store.job_ids() == [] and not list(private_store.client.scan_iter(f"{settings.key_prefix}:*"))


def _verdict(index: int) -> str:
    return json.dumps({"passed": index % 2, "samples": 1, "verdicts": [{"status": "passed" if index % 2 else "failed",
                                                                       "program": "x" * 1000}]})


def test_verification_keeps_only_what_is_in_flight_in_redis_and_the_results_carry_every_verdict(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    """Specs go to the work folder at submit; verdicts leave Redis for verdict parts once a worker flushes them;
    first-wins holds after the flush; the results merge both; the results file takes them and they leave."""
    store = private_store
    items = 2100  # three spec files (1024 items each), over three submission chunks' boundaries
    job_id = _submit(store, deepseek_dir, tmp_path, items, verify=True, shard_max_requests=700,
                     output_root=str(tmp_path / "out"))
    key = functools.partial(store.keys.job_part, job_id)
    assert not store.client.exists(key("verify"))
    specs = Path(store.work.job(job_id), "verify")
    assert sorted(path.name for path in specs.iterdir()) == ["0", "1", "2"]
    for number in range(3):
        shard = store.shard_key(job_id, number)
        _, indices, positions = _shard(store, shard)
        store.record(job_id, [ResultEntry(index, _line(index, "r"), "done", verify=True) for index in indices],
                     shard, positions)
    assert store.status(job_id).to_verify == items
    spec, line = store.verification_input(job_id, 2099)
    assert spec is not None and json.loads(spec)["tests"] == "assert f2099() == 2099"
    assert line is not None and json.loads(line)["id"] == "q2099"
    before = _job_redis_bytes(store, job_id)

    for index in range(1000):
        assert store.record_verdict(job_id, index, _verdict(index), 1, index % 2)
    assert store.flush_verdicts(job_id) == 1000
    assert store.client.hlen(key("verdicts")) == 0
    assert store.client.zscore(store.keys.verdicts_unflushed, job_id) is None
    # A second executor's verdict for an item whose first left Redis is refused, and counts nothing.
    assert store.has_verdict(job_id, 7) and not store.record_verdict(job_id, 7, _verdict(8), 1, 0)
    for index in range(1000, items):
        assert store.record_verdict(job_id, index, _verdict(index), 1, index % 2)
    assert store.client.hlen(key("verdicts")) == items - 1000
    status = store.status(job_id)
    assert (status.verified, status.verified_samples, status.passed_samples, status.state) == (
        items, items, items // 2, "completed")
    # What `dscbatch results` writes: records from the verdict part and from Redis alike.
    lines = [json.loads(line) for line in output.result_lines(store, status)]
    assert [line["verification"] for line in lines] == [json.loads(_verdict(index)) for index in range(items)]

    assert store.flush_due_verdicts("test") == items - 1000  # a job holding VERDICT_FLUSH_ITEMS is due at once
    assert store.client.hlen(key("verdicts")) == 0 and store.client.llen(key("verdict_parts")) == 2
    after = _job_redis_bytes(store, job_id)
    assert after - before < 4096, f"{after - before} bytes of Redis for {items} verdicts"

    assert finalize.finalize(store, job_id, "test")
    written = (tmp_path / "out" / job_id / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["verification"] for line in written] == [json.loads(_verdict(i)) for i in range(items)]
    assert not any(store.client.exists(key(name)) for name in ("verdicts", "verdicted", "verdict_parts"))
    assert not Path(store.work.job(job_id), "verdicts").exists()
    assert sorted(path.name for path in specs.iterdir()) == ["0", "1", "2"]  # a retry verifies again
    store.delete_job(job_id)
    assert not specs.exists()


def test_a_worker_flushes_a_jobs_verdicts_once_the_oldest_waited_and_forgets_a_deleted_job(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = private_store
    jobs = [_submit(store, deepseek_dir, tmp_path, 3, verify=True, shard_max_requests=4) for _ in range(2)]
    for job_id in jobs:
        store.record(job_id, [ResultEntry(index, _line(index, "r"), "done", verify=True) for index in range(3)],
                     store.shard_key(job_id, 0), {0: 0, 1: 1, 2: 2})
        for index in range(3):
            store.record_verdict(job_id, index, _verdict(index), 1, index % 2)
    assert store.flush_due_verdicts("w1") == 0  # three records a job, just stored: not due
    assert store.flush_due_verdicts("w2") == 0  # and one worker a round
    kept, deleted = jobs
    store.delete_job(deleted)
    monkeypatch.setattr(store_module, "VERDICT_FLUSH_SECONDS", 0)
    store.client.delete(store.keys.verdict_flush)  # the next round
    assert store.flush_due_verdicts("w1") == 3
    assert store.client.zcard(store.keys.verdicts_unflushed) == 0  # the deleted job's entry went too
    assert [json.loads(record or "null") for record in store.iter_verdicts(kept, 3)] == [
        json.loads(_verdict(index)) for index in range(3)]
    assert len(list(Path(store.work.job(kept), "verdicts").iterdir())) == 1


def test_a_retry_after_the_results_file_verifies_the_new_result_with_the_spec_kept_in_the_work_folder(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    store = private_store
    job_id = _submit(store, deepseek_dir, tmp_path, 3, verify=True, shard_max_requests=4,
                     output_root=str(tmp_path / "out"))
    shard = store.shard_key(job_id, 0)
    failure = json.dumps({"id": "q1", "error": {"code": "engine_error"}})
    store.record(job_id, [ResultEntry(0, _line(0, "r"), "done", verify=True),
                          ResultEntry(1, failure, "retryable", retry_item=json.dumps({"i": 1, "ids": [1]})),
                          ResultEntry(2, _line(2, "r"), "done", verify=True)], shard, {0: 0, 1: 1, 2: 2})
    for index in (0, 2):
        assert store.record_verdict(job_id, index, _verdict(index), 1, index % 2)
    store.flush_verdicts(job_id)
    assert finalize.finalize(store, job_id, "test")
    assert store.take_failed(job_id)[0] == [1]  # what `dscbatch retry` does before running it again
    store.record(job_id, [ResultEntry(1, _line(1, "again"), "done", verify=True)])
    spec, line = store.verification_input(job_id, 1)
    assert spec is not None and json.loads(spec)["tests"] == "assert f1() == 1"
    assert line is not None and json.loads(line)["text"] == "again"
    assert not store.has_verdict(job_id, 1) and store.record_verdict(job_id, 1, _verdict(1), 1, 1)
    assert finalize.finalize(store, job_id, "test")
    written = [json.loads(line) for line in (tmp_path / "out" / job_id / "results.jsonl").read_text().splitlines()]
    assert [(line["text"], line["verification"]) for line in written] == [
        (text, json.loads(_verdict(index))) for index, text in enumerate(["r", "again", "r"])]


def test_specs_and_verdict_parts_on_s3(private_settings: Settings, bucket: str) -> None:
    """The same data plane on an object store (moto's S3 through s3fs): the specs an executor reads, the verdict
    parts a worker writes, and what finalization deletes and keeps."""
    store = JobStore.connect(private_settings.model_copy(update={"work_url": f"{bucket}/work"}))
    job_id = "s3-verify"
    store.create_job(job_id, {"model": "m", "queue": "q", "created": 0, "total": 1500, "shards": 0})
    store.save_verify_specs(job_id, {index: json.dumps({"tests": f"t{index}"}) for index in range(1500)})
    store.record(job_id, [ResultEntry(index, _line(index, "r"), "done", verify=True) for index in range(1500)])
    assert [json.loads(store.verification_input(job_id, index)[0] or "")["tests"] for index in (3, 1499)] == [
        "t3", "t1499"]
    for index in range(1500):
        store.record_verdict(job_id, index, _verdict(index), 1, index % 2)
    assert store.flush_verdicts(job_id, limit=1000) == 1500  # two parts
    assert [json.loads(record or "") for record in store.iter_verdicts(job_id, 1500)] == [
        json.loads(_verdict(index)) for index in range(1500)]
    store.work.delete_data(job_id)
    assert objectstore.exists(store.work.verify_specs(job_id, 1))
    assert not objectstore.exists(store.work.verdict_part(job_id, store.client.lindex(
        store.keys.job_part(job_id, "verdict_parts"), 0).decode()))
    store.delete_job(job_id)
    assert not objectstore.exists(store.work.verify_specs(job_id, 1))


def test_a_workers_housekeeping_round_moves_the_verdicts_out_of_redis_then_writes_the_results_file(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    store = private_store
    job_id = _submit(store, deepseek_dir, tmp_path, 3, verify=True, shard_max_requests=4,
                     output_root=str(tmp_path / "out"))
    store.record(job_id, [ResultEntry(index, _line(index, "r"), "done", verify=True) for index in range(3)],
                 store.shard_key(job_id, 0), {0: 0, 1: 1, 2: 2})
    for index in range(3):
        store.record_verdict(job_id, index, _verdict(index), 1, index % 2)
    monkeypatch.setattr(store_module, "VERDICT_FLUSH_SECONDS", 0)

    def requeue(job_id: str, shard_key: str) -> None:
        raise AssertionError(f"nothing is stranded here, yet {shard_key} was requeued")

    with caplog.at_level(logging.INFO, logger="dscbatch.workers.housekeeping"):
        Housekeeper(store, "hk", 86400, Repairer(store, "hk", "no-such-queue", requeue)).round()
    assert "moved 3 verification records to the work folder" in caplog.text
    assert store.status(job_id).results_url is not None
    written = (tmp_path / "out" / job_id / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["verification"] for line in written] == [json.loads(_verdict(i)) for i in range(3)]


@pytest.mark.parametrize("part_format", ["parquet", "jsonl"])
def test_the_output_folder_has_the_results_as_parts_that_read_as_one_table_and_a_manifest(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        part_format: str) -> None:
    monkeypatch.setattr(dataset, "PART_LINES", 3)
    store = private_store
    job_id = _submit(store, deepseek_dir, tmp_path, 7, shard_max_requests=4, output_root=str(tmp_path / "out"),
                     output_parts=part_format)
    for number in range(2):
        shard = store.shard_key(job_id, number)
        _, indices, positions = _shard(store, shard)
        store.record(job_id, [ResultEntry(index, json.dumps({"id": f"q{index}", "outputs": [
            {"text": f"t{index}", "finish_reason": "stop", "completion_tokens": 1}]}), "done") for index in indices],
                     shard, positions)
    assert finalize.finalize(store, job_id, "test")
    folder = tmp_path / "out" / job_id
    manifest = json.loads((folder / "manifest.json").read_text())
    results = (folder / "results.jsonl").read_bytes()
    assert manifest["results"] == {"name": "results.jsonl", "lines": 7, "bytes": len(results),
                                   "sha256": hashlib.sha256(results).hexdigest()}
    assert manifest["parts"]["files"] == [
        {"name": f"parts/part-{n:05d}.{part_format}", "first_line": first, "lines": lines}
        for n, (first, lines) in enumerate([(1, 3), (4, 3), (7, 1)])]
    if part_format == "parquet":
        table = pyarrow.dataset.dataset(str(folder / "parts"), format="parquet").to_table()
        assert table.column("id").to_pylist() == [f"q{i}" for i in range(7)]
        assert [outputs[0]["text"] for outputs in table.column("outputs").to_pylist()] == [f"t{i}" for i in range(7)]
    else:
        lines = [line for part in sorted((folder / "parts").iterdir()) for line in part.read_text().splitlines()]
        assert lines == results.decode().splitlines()


def test_output_parts_without_an_output_folder_is_refused_in_one_line(private_settings: Settings,
                                                                     deepseek_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "def f():"}\n')
    result = cli("submit", str(path), "--model", str(deepseek_dir), "--output-parts", "parquet",
                 env=worker_env(private_settings))
    assert result.returncode == 2 and "--output-parts needs an output folder" in result.stderr, result.stderr


def _commit_all(store: JobStore, job_id: str, keys: list[str], text: str) -> None:
    """Commit every item of the shards as a worker would: two parts a shard, tokens on each run's first line."""
    for shard in keys:
        items, indices, positions = _shard(store, shard)
        firsts = {item["i"] for item in items}
        entries = [ResultEntry(index, _line(index, text), "done", *((5, 7, 1) if index in firsts else (0, 0, 0)))
                   for index in indices]
        half = len(entries) // 2
        for chunk in (entries[:half], entries[half:]):
            store.record(job_id, chunk, shard, positions)
        store.drop_shard(job_id, shard, indices)


def test_retry_runs_again_the_items_of_a_result_part_the_work_folder_lost(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    store = private_store
    path = tmp_path / "p.jsonl"
    prompts = ["def a():", "def b():", "def c():", "def d():", "def e():", "def f():", "def c():", "def d():"]
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    job_id = submit_job(store, lambda queue, job, key: None, path,
                        SubmitOptions(model=str(deepseek_dir), shard_max_requests=2,
                                      output_root=str(tmp_path / "out")))
    status = store.status(job_id)
    assert status.deduplicated == 2  # q6 and q7 are folded into q2 and q3
    _commit_all(store, job_id, [store.shard_key(job_id, number) for number in range(status.shards)], "first")
    before = store.status(job_id)
    assert (before.done, before.prompt_tokens, before.state) == (8, 30, "completed")
    # The part holding q2's result (and its folded duplicate q6's) leaves the work folder.
    lost = next(entry for entry in store.part_entries(job_id)
                if 2 in dict(parts.decode("", store.work.read(store.work.part(job_id, entry.name)))))
    lost_indices = sorted(index for index, _ in parts.decode("", store.work.read(store.work.part(job_id,
                                                                                                  lost.name))))
    Path(store.work.part(job_id, lost.name)).unlink()
    with pytest.raises(StorageError, match="no such file"):
        finalize.finalize(store, job_id, "test")
    error = store.status(job_id).finalize_error or ""
    assert lost.name in error and f"`dscbatch retry {job_id}` runs its items again" in error

    queued: list[str] = []
    assert retry_failed(store, job_id, lambda queue, job, key: queued.append(key)) == (len(lost_indices),
                                                                                       len(lost_indices))
    status = store.status(job_id)
    assert (status.done, status.pending, status.finalize_error) == (8 - len(lost_indices), len(lost_indices), None)
    assert status.prompt_tokens == 30 - lost.prompt_tokens
    assert sorted(index for key in queued for item in (store.load_shard(key) or {})["items"]
                  for index in item_indices(item)) == lost_indices
    _commit_all(store, job_id, queued, "again")
    after = store.status(job_id)
    assert (after.done, after.failed, after.state, after.prompt_tokens, after.completion_tokens) == (
        8, 0, "completed", before.prompt_tokens, before.completion_tokens)
    assert finalize.finalize(store, job_id, "test")
    lines = [json.loads(line) for line in (tmp_path / "out" / job_id / "results.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == [f"q{i}" for i in range(8)]
    assert [index for index, line in enumerate(lines) if line["text"] == "again"] == lost_indices


def test_retry_replaces_nothing_when_every_part_is_missing(private_store: JobStore, deepseek_dir: Path,
                                                           tmp_path: Path) -> None:
    store = private_store
    job_id = _submit(store, deepseek_dir, tmp_path, 4, shard_max_requests=2)
    _commit_all(store, job_id, [store.shard_key(job_id, number) for number in range(2)], "first")
    for entry in store.part_entries(job_id):
        Path(store.work.part(job_id, entry.name)).unlink()
    with pytest.raises(StorageError, match=r"every result part of job .* is missing .*DSCBATCH_WORK_URL"):
        retry_failed(store, job_id, lambda queue, job, key: None)
    assert store.status(job_id).done == 4

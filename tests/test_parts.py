"""The data plane: shard payloads and results in the job's work folder, committed parts, Redis for coordination."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.dataset
import pytest

from dscbatch.core.errors import StorageError
from dscbatch.core.settings import Settings
from dscbatch.jobs import dataset, finalize, parts
from dscbatch.jobs.grouping import item_indices
from dscbatch.jobs.retrying import retry_failed
from dscbatch.jobs.store import JobStore, ResultEntry
from dscbatch.jobs.submission import SubmitOptions, submit_job

from .conftest import worker_env
from .test_cli import cli


def _submit(store: JobStore, deepseek_dir: Path, tmp_path: Path, count: int, **options: object) -> str:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"def f{i}():"}) + "\n" for i in range(count)))
    return submit_job(store, lambda queue, job, key: None, path,
                      SubmitOptions(model=str(deepseek_dir), dedup=False, group_prefixes=False, **options))


def _line(index: int, text: str) -> str:
    return json.dumps({"id": f"q{index}", "text": text})


def _job_redis_bytes(store: JobStore, job_id: str) -> int:
    keys = [store.job_key(job_id), *store.keys.job_parts(job_id),
            *(store.shard_key(job_id, number) for number in range(store.status(job_id).shards))]
    return sum(store.client.memory_usage(key) or 0 for key in keys)


def test_a_second_copy_of_a_shard_commits_only_what_the_first_did_not(private_store: JobStore, deepseek_dir: Path,
                                                                     tmp_path: Path) -> None:
    store = private_store
    job_id = _submit(store, deepseek_dir, tmp_path, 4, shard_max_requests=4)
    shard = store.shard_key(job_id, 0)
    payload = store.load_shard(shard)
    assert payload is not None
    indices = [index for item in payload["items"] for index in item_indices(item)]
    positions = {index: position for position, index in enumerate(indices)}
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
        payload = store.load_shard(shard)
        assert payload is not None
        indices = [index for item in payload["items"] for index in item_indices(item)]
        positions = {index: position for position, index in enumerate(indices)}
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
        payload = store.load_shard(shard)
        assert payload is not None
        indices = [index for item in payload["items"] for index in item_indices(item)]
        store.record(job_id, [ResultEntry(index, json.dumps({"id": f"q{index}", "outputs": [
            {"text": f"t{index}", "finish_reason": "stop", "completion_tokens": 1}]}), "done") for index in indices],
                     shard, {index: position for position, index in enumerate(indices)})
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
        payload = store.load_shard(shard)
        assert payload is not None
        indices = [index for item in payload["items"] for index in item_indices(item)]
        firsts = {item["i"] for item in payload["items"]}
        entries = [ResultEntry(index, _line(index, text), "done", *((5, 7, 1) if index in firsts else (0, 0, 0)))
                   for index in indices]
        positions = {index: position for position, index in enumerate(indices)}
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

"""Rendering a job range by range (the render tasks' work, issue 23) gives the items the local path gives, in
each partition's sorted run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dscbatch.jobs.byteranges import count_range, offsets, plan_ranges
from dscbatch.jobs.grouping import sort_key
from dscbatch.jobs.rangemerge import partition_of
from dscbatch.jobs.rangerender import render_range
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import Rendering, SubmitOptions
from dscbatch.jobs.tokenizer import ModelTokenizer
from dscbatch.jobs.workfolder import WorkFolder


def write_file(path: Path) -> Path:
    lines = []
    for n in range(60):
        if n % 3 == 0:
            lines.append(json.dumps({"id": f"c{n}", "messages": [
                {"role": "system", "content": "Answer in Python."},
                {"role": "user", "content": f"Question {n}: sort {n} numbers"}]}))
        else:
            lines.append(json.dumps({"id": f"p{n}", "prompt": f"def f_{n % 7}(x):\n    return x * {n}\n"}))
        if n % 11 == 0:
            lines.append("   ")  # blank lines: numbered, not indexed
    path.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def essentials(items: list[dict[str, Any]]) -> list[tuple[int, str, list[int]]]:
    return sorted((item["i"], item["id"], item["ids"]) for item in items)


def test_a_job_rendered_range_by_range_has_the_local_items(private_store: JobStore, deepseek_dir: Path,
                                                           tmp_path: Path) -> None:
    path = str(write_file(tmp_path / "job.jsonl"))
    options = SubmitOptions(model=str(deepseek_dir), shard_max_requests=8, dedup=False)
    tokenizer = ModelTokenizer.load(str(deepseek_dir))
    local = Rendering(private_store, path, options, None, tokenizer)
    expected = essentials(list(local.items()))
    size = Path(path).stat().st_size
    for range_bytes in (97, 500, size):
        ranges = plan_ranges(size, range_bytes)
        firsts = offsets([count_range(path, start, end, options.max_line_bytes) for start, end in ranges])
        rendered = [render_range(private_store, local.header, options, tokenizer, path, start, end, line, index, 3,
                                 number) for number, ((start, end), (line, index))
                    in enumerate(zip(ranges, firsts, strict=True))]
        runs = [[json.loads(raw) for raw in run.splitlines()] for each in rendered for run in each.runs]
        assert essentials([item for run in runs for item in run]) == expected, range_bytes
        for position, run in enumerate(runs):
            # Each partition's run holds only its prefix keys, in prefix order (the merge's input).
            assert all(partition_of(item, 3) == position % 3 for item in run)
            assert [sort_key(item) for item in run] == sorted(sort_key(item) for item in run)


def test_a_bad_line_in_a_range_is_named_with_its_line_in_the_file(private_store: JobStore, deepseek_dir: Path,
                                                                  tmp_path: Path) -> None:
    path = write_file(tmp_path / "job.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[40] = '{"id": "bad", "prompt": 7}'
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    options = SubmitOptions(model=str(deepseek_dir))
    tokenizer = ModelTokenizer.load(str(deepseek_dir))
    header = Rendering(private_store, str(path), options, None, tokenizer).header
    size = path.stat().st_size
    ranges = plan_ranges(size, 400)
    firsts = offsets([count_range(str(path), start, end, options.max_line_bytes) for start, end in ranges])
    refused = [problem for number, ((start, end), (line, index)) in enumerate(zip(ranges, firsts, strict=True))
               for problem in render_range(private_store, header, options, tokenizer, str(path), start, end, line,
                                           index, 1, number).refused]
    assert len(refused) == 1 and refused[0].startswith(f"{path}:41: prompt:"), refused


def test_verify_specs_rendered_range_by_range_are_found_for_every_item_as_locally(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    # 3,000 lines, two of three with a verify spec, in two ranges of some 1,500 items: the spec file of indices
    # 1,024 to 2,047 would straddle them. Each range writes files of its own, counted from its first index.
    path = tmp_path / "job.jsonl"
    rows = []
    for n in range(3000):
        row: dict[str, Any] = {"id": f"r{n}", "prompt": f"def f{n}():\n"}
        if n % 3:
            row["verify"] = {"tests": f"assert f{n}() == {n}"}
        rows.append(json.dumps(row) + "\n" + ("\n" if n % 700 == 0 else ""))  # blank lines: not indexed
    path.write_text("".join(rows))
    options = SubmitOptions(model=str(deepseek_dir), dedup=False)
    tokenizer = ModelTokenizer.load(str(deepseek_dir))
    local = Rendering(private_store, str(path), options, None, tokenizer)
    assert len(list(local.items())) == 3000
    job_id = f"{local.id}-cluster"
    header = {**local.header, "job": job_id}
    ranges = plan_ranges(path.stat().st_size, path.stat().st_size // 2 + 1)
    firsts = offsets([count_range(str(path), start, end, options.max_line_bytes) for start, end in ranges])
    assert len(firsts) == 2 and 1024 < firsts[1][1] < 2048, firsts
    private_store.save_range_bases(job_id, [index for _, index in firsts])
    for number, ((start, end), (line, index)) in enumerate(zip(ranges, firsts, strict=True)):
        render_range(private_store, header, options, tokenizer, str(path), start, end, line, index, 2, number)
    folder = Path(private_store.work.job(job_id), "verify")
    written = {file.name: file.read_bytes() for file in folder.iterdir()}
    assert sorted(written) == ["0-0", "0-1", "1-0", "1-1"]
    (start, end), (line, index) = ranges[1], firsts[1]  # range 1 rendered again (its worker died): the same files
    render_range(private_store, header, options, tokenizer, str(path), start, end, line, index, 2, 1)
    assert {file.name: file.read_bytes() for file in folder.iterdir()} == written

    class Counted(WorkFolder):
        reads = 0

        def read(self, url: str) -> bytes:
            self.reads += 1
            return super().read(url)

    class Executor(JobStore):  # an executor's store: what it reads to find the specs, in index order
        bases_read = 0

        def range_bases(self, job_id: str) -> tuple[int, ...] | None:
            self.bases_read += 1
            return super().range_bases(job_id)

    work = Counted(private_store.work.root)
    executor = Executor(private_store.client, private_store.prefix, work)
    found = [executor._verify_spec(job_id, index) for index in range(3000)]
    assert (executor.bases_read, work.reads) == (1, 4)  # the bases once, each file once
    assert found == [private_store._verify_spec(local.id, index) for index in range(3000)]
    assert [json.loads(spec)["tests"] if spec else None for spec in found] == [
        f"assert f{n}() == {n}" if n % 3 else None for n in range(3000)]
    for job in (job_id, local.id):
        private_store.delete_job(job)
    assert not folder.exists()

"""Byte ranges at line boundaries: every line owned by exactly one range, in order, whatever the cut points."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import fsspec
import pytest

from dscbatch.jobs import byteranges
from dscbatch.jobs.reader import _raw_lines


def whole_file(url: str, limit: int) -> list[bytes | None]:
    return [body for _, body in _raw_lines(url, limit)]


def by_ranges(url: str, size: int, range_bytes: int, limit: int) -> list[bytes | None]:
    return [body for start, end in byteranges.plan_ranges(size, range_bytes)
            for body in byteranges.range_lines(url, start, end, limit)]


CASES = [
    b"",
    b"\n",
    b"a",
    b"a\nb\nc\n",
    b"a\nb\nc",
    b"\xef\xbb\xbf{\"prompt\": \"x\"}\n\n{\"prompt\": \"y\"}\r\n",
    b"\n\n\nlong-line-" + b"x" * 50 + b"\nshort\n" + b"y" * 60,
]


@pytest.mark.parametrize("data", CASES)
@pytest.mark.parametrize("range_bytes", [1, 2, 3, 7, 16, 1000])
def test_ranges_give_every_line_once_in_order(tmp_path: Path, data: bytes, range_bytes: int) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    assert by_ranges(str(path), len(data), range_bytes, 20) == whole_file(str(path), 20)


def test_random_files_and_counts_give_dense_offsets(tmp_path: Path) -> None:
    rng = random.Random(23)
    for _ in range(30):
        lines = [b"" if rng.random() < 0.1 else b"x" * rng.randint(1, 40) for _ in range(rng.randint(0, 60))]
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
        path = tmp_path / "in.jsonl"
        path.write_bytes(data)
        range_bytes = rng.randint(1, 200)
        expected = whole_file(str(path), 30)
        assert by_ranges(str(path), len(data), range_bytes, 30) == expected
        ranges = byteranges.plan_ranges(len(data), range_bytes)
        counts = [byteranges.count_range(str(path), start, end, 30) for start, end in ranges]
        assert sum(c.physical for c in counts) == len(expected)
        assert sum(c.nonblank for c in counts) == sum(1 for body in expected if body is None or body.strip())
        starts = byteranges.offsets(counts)
        for (start, end), (line, _) in zip(ranges, starts, strict=True):
            owned = list(byteranges.range_lines(str(path), start, end, 30))
            assert owned == expected[line - 1:line - 1 + len(owned)]


def test_stat_of_an_fsspec_object_changes_with_its_content() -> None:
    url = f"memory://byteranges-{uuid.uuid4().hex}/in.jsonl"
    with fsspec.open(url, "wb") as stream:
        stream.write(b"a\nb\n")
    first = byteranges.stat_input(url)
    assert first.size == 4
    assert by_ranges(url, first.size, 3, 10) == [b"a", b"b"]
    with fsspec.open(url, "wb") as stream:
        stream.write(b"a\nbc\n")
    assert byteranges.stat_input(url).size == 5


def test_plan_ranges_covers_the_file() -> None:
    assert byteranges.plan_ranges(0, 10) == [(0, 0)]
    assert byteranges.plan_ranges(25, 10) == [(0, 10), (10, 20), (20, 25)]
    with pytest.raises(ValueError):
        byteranges.plan_ranges(5, 0)


def test_ranges_over_s3_match_the_whole_file_and_the_etag_names_the_content(bucket: str) -> None:
    url = f"{bucket}/in.jsonl"
    rng = random.Random(5)
    data = b"".join(b'{"prompt": "%s"}\n' % (b"p" * rng.randint(0, 300)) for _ in range(2000))
    with fsspec.open(url, "wb") as stream:
        stream.write(data)
    planned = byteranges.stat_input(url)
    assert planned.size == len(data) and planned.version
    assert by_ranges(url, planned.size, 50_000, 1000) == whole_file(url, 1000)
    with fsspec.open(url, "wb") as stream:
        stream.write(data.replace(b"p", b"q", 1))
    changed = byteranges.stat_input(url)
    assert changed.size == planned.size and changed.version != planned.version

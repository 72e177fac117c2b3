"""Byte ranges of a JSONL input at line boundaries: the planning half of rendering on the cluster (issue 23).

A range ``[start, end)`` owns every physical line whose first byte lies in it (the Hadoop rule): a range that
does not start at 0 skips the partial line it starts in, and the last line it owns is read past ``end`` to its
ending. Ranges planned by :func:`plan_ranges` therefore hand out every line of the file exactly once, and the
lines of range after range, concatenated, are the file's lines in order. :func:`count_range` gives a range's
physical and non-blank line counts, from which the first line number and first item index of every range
follow (dense, input-order indices, as the local path gives them). :func:`stat_input` is the planning read's
identity of the object (size and ETag, or size and modification time) that a render task checks again.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

import fsspec

from dscbatch.jobs import objectstore

DEFAULT_RANGE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class InputStat:
    size: int
    version: str  # the ETag where the store has one, else the modification time; "" when neither is known


@dataclass(frozen=True)
class RangeCount:
    physical: int  # physical lines starting in the range (line numbers advance by these)
    nonblank: int  # lines that are not blank (item indices advance by these)


def stat_input(url: str) -> InputStat:
    """The input's size and version, at constant cost in its size; a missing or unreadable input raises
    :class:`~dscbatch.core.errors.StorageError`."""
    try:
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
    except Exception as error:
        raise objectstore.describe(url, error) from None
    version = next((str(info[key]) for key in ("ETag", "etag", "mtime", "LastModified", "created") if info.get(key)),
                   "")
    return InputStat(int(info.get("size") or 0), version.strip('"'))


def plan_ranges(size: int, range_bytes: int = DEFAULT_RANGE_BYTES) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of at most ``range_bytes`` covering ``size`` bytes (one empty range for an
    empty file)."""
    if range_bytes <= 0:
        raise ValueError("range_bytes must be positive")
    if size <= 0:
        return [(0, 0)]
    return [(start, min(start + range_bytes, size)) for start in range(0, size, range_bytes)]


def read_physical_line(stream: IO[bytes], first: bool, max_line_bytes: int,
                       on_bytes: Callable[[bytes], None] | None = None) -> tuple[bytes | None, int] | None:
    """The next physical line of ``stream`` without its ending (the BOM dropped from the file's ``first``),
    ``None`` for a line over ``max_line_bytes`` (read to its end), and the bytes it took; None at the end of
    the stream. ``on_bytes`` sees every byte read."""
    raw = stream.readline(max_line_bytes + 2)
    if not raw:
        return None
    if on_bytes is not None:
        on_bytes(raw)
    taken = len(raw)
    if first and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    ended = raw.endswith(b"\n")
    body = raw.rstrip(b"\n").removesuffix(b"\r")
    if len(body) <= max_line_bytes:
        return body, taken
    while not ended and (rest := stream.readline(1 << 20)):
        if on_bytes is not None:
            on_bytes(rest)
        taken += len(rest)
        ended = rest.endswith(b"\n")
    return None, taken


def range_lines(url: str, start: int, end: int, max_line_bytes: int) -> Iterator[bytes | None]:
    """The physical lines starting in ``[start, end)``, without their endings, as ``read_lines`` sees them
    (the BOM of the file's first line dropped); ``None`` stands for a line over ``max_line_bytes``."""
    # Read-ahead of the range's own length (and a little past it for the last line), not the store's default
    # block (50 MiB for s3fs): a range would otherwise fetch far more than it owns.
    block_size = max(1 << 20, min(end - start + (1 << 20), 64 << 20))
    with objectstore.open_read(url, block_size) as stream:
        position = start
        if start > 0:
            stream.seek(start - 1)
            position = start - 1
            while True:  # the line holding byte start - 1 belongs to the range before
                skipped = stream.readline(1 << 20)
                position += len(skipped)
                if not skipped or skipped.endswith(b"\n"):
                    break
        else:
            stream.seek(0)
        while position < end and (line := read_physical_line(stream, position == 0, max_line_bytes)) is not None:
            body, taken = line
            position += taken
            yield body


def count_range(url: str, start: int, end: int, max_line_bytes: int) -> RangeCount:
    """How many physical and non-blank lines start in ``[start, end)``."""
    physical = nonblank = 0
    for body in range_lines(url, start, end, max_line_bytes):
        physical += 1
        if body is None or body.strip():
            nonblank += 1
    return RangeCount(physical, nonblank)


def offsets(counts: list[RangeCount]) -> list[tuple[int, int]]:
    """Each range's first line number (1-based) and first item index, from the ranges' counts in order."""
    result = []
    line, index = 1, 0
    for count in counts:
        result.append((line, index))
        line += count.physical
        index += count.nonblank
    return result

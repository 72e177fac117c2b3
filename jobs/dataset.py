"""A job's output folder: the results file, optionally the same lines as a dataset of parts, and a manifest.

Layout (``<output folder>/``)::

    results.jsonl                every item's line, in input order (``jobs.finalize``)
    parts/part-00000.parquet     with ``submit --output-parts parquet`` (or ``jsonl``): the same lines, in input
    parts/part-00001.parquet     order, PART_LINES to a file, so that a reader of folders (``pyarrow.dataset``,
    ...                          Spark, DuckDB's ``read_parquet('parts/*.parquet')``) gets them as one table
    manifest.json                written last: what the folder holds, each file's lines, bytes and SHA-256

Each file is written whole or not at all (``objectstore.write_atomic``), and the manifest after every other file:
a folder with a manifest is complete, and a reader that lists the manifest's files never sees a half-written one.
A later finalization (after a ``retry``) rewrites every file and then the manifest. The lines go through once:
memory holds one part's lines (PART_LINES) at most, whatever the job's size.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

from dscbatch.jobs import objectstore
from dscbatch.jobs.output import write_lines

RESULTS_FILE = "results.jsonl"
MANIFEST_FILE = "manifest.json"
PARTS_FOLDER = "parts"
PART_FORMATS = ("jsonl", "parquet")
PART_LINES = 50_000


def _write_part(url: str, lines: list[str], part_format: str) -> None:
    if part_format == "parquet":
        from dscbatch.jobs import parquet  # pyarrow: only for Parquet parts

        parquet.write_lines(lines, url)
    else:
        write_lines(iter(lines), url)


def write_output(lines: Iterator[str], folder: str, job_id: str, part_format: str | None = None) -> int:
    """Write the job's output folder from its lines in input order (parts too, with ``part_format``); returns
    how many lines."""
    digest = hashlib.sha256()
    size = 0
    parts: list[dict[str, Any]] = []

    def seen(data: bytes) -> None:
        nonlocal size
        digest.update(data)
        size += len(data)

    def flush(chunk: list[str]) -> None:
        assert part_format is not None
        name = f"{PARTS_FOLDER}/part-{len(parts):05d}.{part_format}"
        _write_part(objectstore.join(folder, name), chunk, part_format)
        first = parts[-1]["first_line"] + parts[-1]["lines"] if parts else 1
        parts.append({"name": name, "first_line": first, "lines": len(chunk)})

    def parted() -> Iterator[str]:
        """The lines, each part written once it holds PART_LINES of them."""
        chunk: list[str] = []
        for line in lines:
            yield line
            chunk.append(line)
            if len(chunk) == PART_LINES:
                flush(chunk)
                chunk = []
        if chunk:
            flush(chunk)

    written = write_lines(lines if part_format is None else parted(), objectstore.join(folder, RESULTS_FILE),
                          seen=seen)
    manifest = {"job": job_id, "written_at": time.time(), "lines": written,
                "results": {"name": RESULTS_FILE, "lines": written, "bytes": size, "sha256": digest.hexdigest()},
                "parts": None if part_format is None else {"format": part_format, "files": parts}}
    with objectstore.write_atomic(objectstore.join(folder, MANIFEST_FILE)) as stream:
        stream.write((json.dumps(manifest, indent=1) + "\n").encode())
    return written

"""A job's result lines in input order, and writing them to a results file at a local path or fsspec URL.

The lines are merged from the job's committed result parts (``jobs.parts``) and, once it is finalized
(``jobs.finalize``: its parts and verdicts are in its results file and have left the work folder and Redis),
read from its results file, with any result committed since (a ``retry``) taking precedence.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Callable, Generator, Iterator

from dscbatch.core.errors import DscbatchError, StorageError
from dscbatch.jobs import objectstore
from dscbatch.jobs.fileformat import is_parquet
from dscbatch.jobs.grouping import folded_items
from dscbatch.jobs.results import ItemInfo, result_line, with_verification
from dscbatch.jobs.store import JobStatus, JobStore

WRITE_CHUNK_BYTES = 1 << 20


def _unsettled_items(store: JobStore, status: JobStatus) -> dict[int, ItemInfo]:
    """The items still without a result, read back from their shards (only done for unfinished jobs; a shard
    is deleted once all its items have a result, so every unsettled item's shard is still there)."""
    found: dict[int, ItemInfo] = {}
    for number in range(status.shards):
        key = store.shard_key(status.id, number)
        payload = store.load_shard(key)
        items = [each for item in payload["items"] for each in folded_items(item)] if payload else []
        settled = store.settled(key, [item["i"] for item in items])
        found.update((item["i"], ItemInfo.from_shard_item(item)) for item in items if item["i"] not in settled)
    return found


def _finalized_lines(url: str, total: int) -> Generator[str, None, None]:
    """The lines of a job's earlier results file (the caller reads ``total`` of them)."""
    count = 0
    with objectstore.open_read(url) as stream:
        for raw in stream:
            count += 1
            yield raw.decode("utf-8").rstrip("\n")
    raise StorageError(f"{url}: holds {count} result lines, the job has {total} items")


def result_lines(store: JobStore, status: JobStatus, *, partial: bool = False,
                 passed_only: bool = False) -> Iterator[str]:
    """Every item's line in input order; items that never ran get an error record, verified items their
    ``verification``. With ``passed_only``, only lines with samples that passed (and only those samples)."""
    if not status.settled and not partial:
        raise DscbatchError(f"job {status.id} is {status.state} with {status.pending} of {status.total} items "
                            f"pending and {status.verifying} results awaiting verification: wait for it, or "
                            "pass --partial")
    return _lines(store, status, passed_only)


def _lines(store: JobStore, status: JobStatus, passed_only: bool) -> Iterator[str]:
    unsettled = _unsettled_items(store, status) if status.pending else {}
    code = "cancelled" if status.cancelled else "pending"
    verified = status.to_verify > 0 or passed_only
    verdicts = store.iter_verdicts(status.id, status.total) if verified else itertools.repeat(None)
    with contextlib.ExitStack() as stack:
        earlier = None
        if status.results_file is not None:
            earlier = stack.enter_context(contextlib.closing(_finalized_lines(status.results_file, status.total)))
        for (index, line), verification in zip(store.results(status.id, status.total), verdicts, strict=False):
            before = next(earlier) if earlier is not None else None
            if line is None and before is not None:
                line = before  # finalized: its verification (if any) is in the line, its verdict left Redis
                if passed_only and verification is None and "verification" in (record := json.loads(line)):
                    verification = json.dumps(record["verification"])
            if line is None:
                info = unsettled.get(index) or ItemInfo(index, str(index + 1), "unknown", False, None)
                line = result_line(info, model=status.model, job_id=status.id, created=int(status.created),
                                   error_code=code, error_message=f"the item did not run: the job is {code}")
            if verification is not None:
                line = with_verification(line, verification, passed_only)
            if line is not None and not (passed_only and verification is None):
                yield line


def write_lines(lines: Iterator[str], out: str, progress: Callable[[int], None] | None = None,
                seen: Callable[[bytes], None] | None = None) -> int:
    """Write ``lines`` to ``out``, whole or not at all (``objectstore.write_atomic``); returns how many.
    ``seen`` gets every block of bytes written, in order (to hash or count the file)."""
    written = 0
    with objectstore.write_atomic(out) as stream:
        chunk: list[bytes] = []
        size = 0

        def write() -> None:
            data = b"".join(chunk)
            stream.write(data)
            if seen is not None:
                seen(data)

        for line in lines:
            data = (line + "\n").encode("utf-8")
            chunk.append(data)
            size += len(data)
            written += 1
            if size >= WRITE_CHUNK_BYTES:
                write()
                chunk, size = [], 0
            if progress is not None and written % 10000 == 0:
                progress(written)
        write()
    return written


def write_results(store: JobStore, status: JobStatus, out: str, *, partial: bool = False,
                  passed_only: bool = False, progress: Callable[[int], None] | None = None) -> int:
    """Write :func:`result_lines` to ``out`` (Parquet for a ``.parquet`` name, else JSONL). Returns lines
    written."""
    lines = result_lines(store, status, partial=partial, passed_only=passed_only)
    if is_parquet(out):
        from dscbatch.jobs import parquet  # pyarrow: only for Parquet files

        return parquet.write_lines(lines, out)
    return write_lines(lines, out, progress)

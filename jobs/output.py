"""A job's result lines in input order, and writing them to a results file at a local path or fsspec URL.

The lines come from Redis while the job runs; once it is finalized (``jobs.finalize``) its results have left
Redis, and they come from its results file, with any result stored since (a ``retry``) taking precedence.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator

from dscbatch.jobs import objectstore
from dscbatch.jobs.errors import DscbatchError, StorageError
from dscbatch.jobs.results import ItemInfo, result_line
from dscbatch.jobs.store import JobStatus, JobStore

WRITE_CHUNK_BYTES = 1 << 20


def _unsettled_items(store: JobStore, status: JobStatus) -> dict[int, ItemInfo]:
    """The items still without a result, read back from their shards (only done for unfinished jobs; a shard
    leaves Redis once all its items have a result, so every unsettled item's shard is still there)."""
    found: dict[int, ItemInfo] = {}
    for number in range(status.shards):
        payload = store.load_shard(store.shard_key(status.id, number))
        items = payload["items"] if payload else []
        settled = store.settled(status.id, [item["i"] for item in items])
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


def result_lines(store: JobStore, status: JobStatus, *, partial: bool = False) -> Iterator[str]:
    """Every item's line in input order; items that never ran get an error record."""
    if status.pending and not (status.cancelled or partial):
        raise DscbatchError(f"job {status.id} is {status.state} with {status.pending} of {status.total} items "
                            "pending: wait for it, or pass --partial")
    unsettled = _unsettled_items(store, status) if status.pending else {}
    code = "cancelled" if status.cancelled else "pending"
    with contextlib.ExitStack() as stack:
        earlier = None
        if status.results_file is not None:
            earlier = stack.enter_context(contextlib.closing(_finalized_lines(status.results_file, status.total)))
        for index, line in store.iter_results(status.id, status.total):
            before = next(earlier) if earlier is not None else None
            if line is None:
                line = before
            if line is None:
                info = unsettled.get(index) or ItemInfo(index, str(index + 1), "unknown", False, None)
                line = result_line(info, model=status.model, job_id=status.id, created=int(status.created),
                                   error_code=code, error_message=f"the item did not run: the job is {code}")
            yield line


def write_lines(lines: Iterator[str], out: str, progress: Callable[[int], None] | None = None) -> int:
    """Write ``lines`` to ``out``, whole or not at all (``objectstore.write_atomic``); returns how many."""
    written = 0
    with objectstore.write_atomic(out) as stream:
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            data = (line + "\n").encode("utf-8")
            chunk.append(data)
            size += len(data)
            written += 1
            if size >= WRITE_CHUNK_BYTES:
                stream.write(b"".join(chunk))
                chunk, size = [], 0
            if progress is not None and written % 10000 == 0:
                progress(written)
        stream.write(b"".join(chunk))
    return written


def write_results(store: JobStore, status: JobStatus, out: str, *, partial: bool = False,
                  progress: Callable[[int], None] | None = None) -> int:
    """Write every item's line to ``out``. Returns lines written."""
    return write_lines(result_lines(store, status, partial=partial), out, progress)

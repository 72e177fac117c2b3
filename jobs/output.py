"""Writing a job's results file: one line per input line, in input order, to a local path or fsspec URL."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import fsspec

from dscbatch.jobs.errors import DscbatchError
from dscbatch.jobs.results import ItemInfo, result_line, with_verification
from dscbatch.jobs.store import JobStatus, JobStore


def _unsettled_items(store: JobStore, status: JobStatus) -> dict[int, ItemInfo]:
    """The items still without a result, read back from their shards (only done for unfinished jobs)."""
    found: dict[int, ItemInfo] = {}
    for number in range(status.shards):
        payload = store.load_shard(store.shard_key(status.id, number))
        items = payload["items"] if payload else []
        settled = store.settled(status.id, [item["i"] for item in items])
        found.update((item["i"], ItemInfo.from_shard_item(item)) for item in items if item["i"] not in settled)
    return found


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
    for (index, line), verification in zip(store.iter_results(status.id, status.total), verdicts, strict=False):
        if line is None:
            info = unsettled.get(index) or ItemInfo(index, str(index + 1), "unknown", False, None)
            line = result_line(info, model=status.model, job_id=status.id, created=int(status.created),
                               error_code=code, error_message=f"the item did not run: the job is {code}")
        if verification is not None:
            line = with_verification(line, verification, passed_only)
        if line is not None and not (passed_only and verification is None):
            yield line


def write_results(store: JobStore, status: JobStatus, out: str, *, partial: bool = False,
                  passed_only: bool = False, progress: Callable[[int], None] | None = None) -> int:
    """Write :func:`result_lines` to ``out``. Returns lines written."""
    lines = result_lines(store, status, partial=partial, passed_only=passed_only)
    written = 0
    with fsspec.open(out, "w", encoding="utf-8") as stream:
        for line in lines:
            stream.write(line + "\n")
            written += 1
            if progress is not None and written % 10000 == 0:
                progress(written)
    return written

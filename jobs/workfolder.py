"""A job's data outside Redis: its work folder, ``DSCBATCH_WORK_URL``/jobs/ID/ (a local folder or any fsspec URL
that every submitter, worker and executor of the deployment reaches: S3 or GCS in a cluster).

Layout::

    WORK/jobs/ID/shards/N       a shard's payload (``shard_codec``), from submit until the job's results file is
                                written (a Redis restarted from an older state may need it again)
    WORK/jobs/ID/parts/NAME     a part of the job's results (``jobs.parts``), written by a worker; the job's parts
                                list in Redis names the committed ones, others are a dead writer's or a refused
                                copy's and are never read; all go once the results file holds them
    WORK/jobs/ID/verify/N       the ``verify`` specs (tests) of items ``N * 1024`` to ``N * 1024 + 1023`` that carry
                                one, in the part format (``JobStore.save_verify_specs``), written at submit and kept
                                until the job is deleted (a ``retry`` after the results file verifies again)
    WORK/jobs/ID/verify/R-N     instead, in a job rendered on the cluster: range R's specs of its items ``B + N *
                                1024`` to ``B + N * 1024 + 1023``, B its first item index, written by its render task
                                (``JobStore.save_range_verify_specs``, ``jobs.store.specs``), kept likewise
    WORK/jobs/ID/verdicts/NAME  a verdict part: verification records a worker moved out of Redis, in the part
                                format; the job's verdict parts list in Redis names those that count; all go once
                                the results file holds them

Redis holds coordination only (``core/keys.py``): the job record and counters, a bitmap per shard in flight,
the names of committed parts, the verification records not yet moved to a verdict part. A job's deletion
removes its work folder.

Every write and read retries with backoff while the store fails (an outage, throttling) for up to
``RETRY_SECONDS``, saying so in the log each time and to ``on_retry`` (the worker's metrics); a call that
still fails then raises :class:`StorageError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from dscbatch.core.errors import MissingDataError, StorageError
from dscbatch.jobs import objectstore

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_SECONDS = 300.0
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0


class WorkFolder:
    def __init__(self, root: str, on_retry: Callable[[str], None] | None = None,
                 retry_seconds: float = RETRY_SECONDS) -> None:
        self.root = root.rstrip("/")
        self.on_retry = on_retry
        self.retry_seconds = retry_seconds

    def job(self, job_id: str) -> str:
        return objectstore.join(self.root, "jobs", job_id)

    def shard(self, job_id: str, number: int) -> str:
        return objectstore.join(self.job(job_id), "shards", str(number))

    def ids(self, job_id: str, number: int) -> str:
        """The sorted ids of range ``number`` of a job rendered on the cluster (``jobs.rangeids``)."""
        return objectstore.join(self.job(job_id), "ids", str(number))

    def runs(self, job_id: str, number: int) -> str:
        """Range ``number``'s sorted runs, one per partition, one after the other, of a job rendered on the
        cluster (``jobs.rangemerge``)."""
        return objectstore.join(self.job(job_id), "runs", str(number))

    def part(self, job_id: str, name: str) -> str:
        return objectstore.join(self.job(job_id), "parts", name)

    def verify_specs(self, job_id: str, chunk: int) -> str:
        return objectstore.join(self.job(job_id), "verify", str(chunk))

    def range_verify_specs(self, job_id: str, number: int, chunk: int) -> str:
        """Range ``number``'s specs file ``chunk`` (counted from its first item index) of a job rendered on the
        cluster."""
        return objectstore.join(self.job(job_id), "verify", f"{number}-{chunk}")

    def verdict_part(self, job_id: str, name: str) -> str:
        return objectstore.join(self.job(job_id), "verdicts", name)

    def write(self, url: str, data: bytes) -> None:
        self._retrying("write", url, lambda: objectstore.write_bytes(url, data))

    def read(self, url: str) -> bytes:
        return self._retrying("read", url, lambda: objectstore.read_bytes(url))

    def delete(self, url: str) -> None:
        self._retrying("delete", url, lambda: objectstore.delete(url))

    def delete_job(self, job_id: str) -> None:
        self._delete_tree(self.job(job_id))

    def _delete_tree(self, url: str) -> None:
        self._retrying("delete", url, lambda: objectstore.delete_tree(url))

    def delete_data(self, job_id: str) -> None:
        """Remove the job's shard payloads, parts and verdict parts (its results file holds what they did); its
        ``verify`` specs stay until the job is deleted (a ``retry`` verifies its new results)."""
        for folder in ("parts", "shards", "verdicts"):
            self._delete_tree(objectstore.join(self.job(job_id), folder))

    def check_writable(self) -> None:
        """Write, read back and delete a probe file under the root, once (no retries): a work folder that cannot
        be used is one line at submit or at a worker's start, before anything depends on it."""
        probe = objectstore.join(self.root, f".probe-{time.time_ns()}")
        objectstore.write_bytes(probe, b"dscbatch")
        if objectstore.read_bytes(probe) != b"dscbatch":
            raise StorageError(f"{probe}: read back other bytes than were written")
        objectstore.delete(probe)

    def _retrying(self, action: str, url: str, operation: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.retry_seconds
        backoff = FIRST_BACKOFF_SECONDS
        while True:
            try:
                return operation()
            except StorageError as error:
                if action == "read" and isinstance(error, MissingDataError):
                    raise  # not an outage: retrying will not bring it back
                if time.monotonic() + backoff > deadline:
                    raise
                log.warning("work folder: %s failed (%s); retrying in %.1f s", action, error, backoff)
                if self.on_retry is not None:
                    self.on_retry(action)
                time.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

"""The worker's housekeeping thread: moves verification records from Redis to the work folder, writes results
files, queues stranded shards again (``workers/repair.py``) and applies retention.

Results files are written here, never in a shard slot (a slot spent writing a 2M-line file would leave the GPU
short of work): the worker that finishes a job's last shard wakes this thread, which writes the file at once.
Every ``HOUSEKEEPING_SECONDS`` it also catches the rest: jobs that settled at submission, files whose writer
died (its claim reaped by a heartbeat, ``jobs.finalize.reap_finalizers``), files of jobs that settled just as
their worker stopped, and writes that failed (tried again after ``FINALIZE_RETRY_SECONDS``). It runs beside the
heartbeat, not in it, so a long write never delays a heartbeat.
"""

from __future__ import annotations

import logging
import time

from dscbatch.core.errors import DscbatchError
from dscbatch.core.threads import LoopThread
from dscbatch.jobs import finalize, retention
from dscbatch.jobs.store import JobStore
from dscbatch.workers.repair import Repairer

log = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 10
FINALIZE_RETRY_SECONDS = 60
# At most one retention sweep this often, whatever the number of workers.
RETENTION_SWEEP_SECONDS = 60


class Housekeeper(LoopThread):
    interval = HOUSEKEEPING_SECONDS
    delay_first = True

    def __init__(self, store: JobStore, hostname: str, job_retention: int, repairer: Repairer) -> None:
        super().__init__(name="dscbatch-housekeeping")
        self.store = store
        self.hostname = hostname
        self.job_retention = job_retention
        self.repairer = repairer
        self._retry_at: dict[str, float] = {}  # job id -> when to try its failed write again

    def round(self) -> None:
        self.flush_verdicts()
        self.write_results_files()
        self.repairer.repair()
        if self.store.lock(self.store.keys.retention_sweep, self.hostname, RETENTION_SWEEP_SECONDS):
            removed = retention.sweep(self.store, self.job_retention)
            if removed:
                log.info("retention: removed %d jobs finished over %d s ago", len(removed), self.job_retention)

    def flush_verdicts(self) -> None:
        """Move verification records out of Redis into verdict parts in the work folder (``JobStore.flush_verdicts``):
        executors store them, but only workers may write the work folder (executors mount it read-only)."""
        try:
            moved = self.store.flush_due_verdicts(self.hostname)
        except DscbatchError as error:
            log.error("cannot move verification records to the work folder (tried again next round): %s", error)
            return
        if moved:
            log.info("moved %d verification records to the work folder", moved)

    def write_results_files(self) -> None:
        now = time.monotonic()
        for job_id in finalize.awaiting(self.store):
            if self._retry_at.get(job_id, 0) > now:
                continue
            try:
                finalize.finalize(self.store, job_id, self.hostname)
                self._retry_at.pop(job_id, None)
            except DscbatchError as error:
                log.error("job %s: cannot write its results file (retried in %d s): %s", job_id,
                          FINALIZE_RETRY_SECONDS, error)
                self._retry_at[job_id] = now + FINALIZE_RETRY_SECONDS

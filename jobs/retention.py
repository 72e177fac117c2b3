"""Retention: finished jobs leave Redis ``DSCBATCH_JOB_RETENTION`` after they finished; ``delete`` at once.

Workers sweep (``workers.housekeeping``), at most one of them a minute. Only Redis keys are removed: a results
file written to the user's folder is theirs and stays. A job waiting for its results file to be written
(``jobs.finalize``) is kept until it is, or until someone deletes it.
"""

from __future__ import annotations

import time

from dscbatch.core.errors import JobRunningError
from dscbatch.jobs import finalize
from dscbatch.jobs.store import JobStatus, JobStore


def delete(store: JobStore, job_id: str, *, cancel: bool = False) -> JobStatus:
    """Remove the job from Redis; a job still running only with ``cancel`` (it is cancelled first)."""
    status = store.status(job_id)
    if status.state in ("submitting", "queued", "running"):
        if not cancel:
            raise JobRunningError(f"job {job_id} is {status.state} with {status.pending} of {status.total} items "
                                  "pending: pass --cancel to cancel and delete it")
        status = store.cancel(job_id)
    store.delete_job(job_id)
    return status


def expired(store: JobStore, retention: float, now: float | None = None) -> list[str]:
    """The jobs that finished more than ``retention`` seconds ago (and do not wait for a results file)."""
    cutoff = (time.time() if now is None else now) - retention
    # A job finishes after it is created: only jobs created before the cutoff can have finished before it.
    candidates = store.jobs_created_before(cutoff)
    waiting = set(finalize.awaiting(store))
    return [job.id for job in store.statuses(candidates)
            if job.finished is not None and job.finished <= cutoff and job.id not in waiting]


def sweep(store: JobStore, retention: float, now: float | None = None) -> list[str]:
    """Delete the expired jobs; returns their ids."""
    removed = expired(store, retention, now)
    for job_id in removed:
        store.delete_job(job_id)
    return removed

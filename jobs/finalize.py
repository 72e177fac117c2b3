"""Finalization: once a job with an output folder settles, exactly one worker writes its results file there.

The file is ``<output folder>/results.jsonl``: one line per input line, in input order, exactly the lines
``dscbatch results JOB -o`` writes (native or OpenAI batch format per line; a failed item's line has its
``error``). It is written with ``objectstore.write_atomic``, so nothing half-written is ever at that name. Beside
it go the same lines as parts, where the job asked for them, and a manifest (``jobs.dataset``).

Exactly one writer: a worker claims the job in ``P:finalizing`` (``HSETNX``) before writing. A claim is a lease
on the worker's heartbeat, like a shard claim: a worker killed while writing leaves its claim behind, and the
first live worker whose heartbeat sees the writer's heartbeat expired drops the claim (``reap_finalizers``), so
another worker finalizes the job (it stays in ``P:finalize`` until one commits).

The file is a streaming merge of the job's committed result parts (``jobs.parts``), run by a worker's
housekeeping thread (never in a shard slot) in memory bounded whatever the job's size. A part that cannot be
read (missing, corrupt) leaves no file: the job shows a ``finalize_error`` naming it, and the next pass tries
again.

The commit is one Lua script (``store/finalize_commit.lua``, run by ``JobStore.commit_finalize`` in
``store/finalizing.py``): it checks that the writer still holds its claim
and that the job has not been unsettled (``retry``) since the writer read it, then records the file's URL and
time on the job record and deletes the job's parts list, verdicts and verdict parts list (all in the file now)
and attempt counters from Redis, then (once Redis has that on disk) the parts, verdict parts and shard payloads
from the work folder (the ``verify`` specs stay with the job: a ``retry`` verifies its new results): a
finalized job's results are its results file, and results stored after it (a ``retry``) take precedence over
its lines (``jobs.output``). The record keeps the counts.
"""

from __future__ import annotations

import logging
import time

from dscbatch.core.errors import DscbatchError, MissingDataError
from dscbatch.jobs import objectstore
from dscbatch.jobs.dataset import RESULTS_FILE, write_output
from dscbatch.jobs.output import result_lines
from dscbatch.jobs.store import JobStore

log = logging.getLogger(__name__)

def awaiting(store: JobStore) -> list[str]:
    """Settled jobs whose results file is not written yet."""
    return store.awaiting_finalize()


def release(store: JobStore, job_id: str, worker: str) -> bool:
    """Drop ``worker``'s finalization claim of the job; True for the one caller that removed it."""
    return store.release_finalize(job_id, worker)


def reap_finalizers(store: JobStore) -> list[str]:
    """Drop the finalization claims of workers whose heartbeat has expired; returns those jobs' ids."""
    reaped = []
    for job_id, worker in store.finalize_claims().items():
        if not store.worker_alive(worker) and release(store, job_id, worker):
            log.warning("worker %s is gone while writing job %s's results; another worker writes them", worker,
                        job_id)
            reaped.append(job_id)
    return reaped


def finalize(store: JobStore, job_id: str, worker: str) -> bool:
    """Write the job's results file if it awaits one and no other worker is writing it; True once written
    and committed here. A storage failure is recorded on the job (``finalize_error``) and raised."""
    if not store.claim_finalize(job_id, worker):
        return False
    try:
        settlement = store.settlement(job_id)
        if settlement is None:
            return False
        status = store.status(job_id)
        assert status.output_url is not None  # only jobs with an output folder are in the finalize set
        url = objectstore.join(status.output_url, RESULTS_FILE)
        started = time.monotonic()
        written = write_output(result_lines(store, status), status.output_url, job_id,
                               status.options["output_parts"])
        committed = store.commit_finalize(job_id, worker, settlement, url, status.shards)
    except DscbatchError as error:
        hint = f"; `dscbatch retry {job_id}` runs its items again" if isinstance(error, MissingDataError) else ""
        store.record_finalize_error(job_id, f"{error}{hint}")
        raise
    finally:
        release(store, job_id, worker)
    if committed:
        # The results file holds the parts now. Deleted only once Redis has the commit on disk: a Redis that
        # restarted without it would write the file again, from these.
        store.confirm_durable()
        store.work.delete_data(job_id)
        log.info("job %s: wrote %d results to %s in %.1f s", job_id, written, url, time.monotonic() - started)
    return committed

"""Finalization: once a job with an output folder settles, exactly one worker writes its results file there.

The file is ``<output folder>/results.jsonl``: one line per input line, in input order, exactly the lines
``dscbatch results JOB -o`` writes (native or OpenAI batch format per line; a failed item's line has its
``error``). It is written with ``objectstore.write_atomic``, so nothing half-written is ever at that name.

Exactly one writer: a worker claims the job in ``P:finalizing`` (``HSETNX``) before writing. A claim is a lease
on the worker's heartbeat, like a shard claim: a worker killed while writing leaves its claim behind, and the
first live worker whose heartbeat sees the writer's heartbeat expired drops the claim (``reap_finalizers``), so
another worker finalizes the job (it stays in ``P:finalize`` until one commits).

The commit is one Lua script: it checks that the writer still holds its claim and that the job has not been
unsettled (``retry``) since the writer read it, then records the file's URL and time on the job record and
deletes the job's results, verdicts (they are in the file), shards and attempt counters from Redis. The
record keeps the counts.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import cast

from dscbatch.core.errors import DscbatchError
from dscbatch.jobs import objectstore
from dscbatch.jobs.output import result_lines, write_lines
from dscbatch.jobs.store import JobStore

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"

# KEYS: finalizing, job, finalize set, then the keys to delete (results, attempt counters, shards).
# ARGV: job id, worker, settlement generation read before writing, results file URL, time.
_COMMIT = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[2], 'settlements') ~= ARGV[3] or not redis.call('HGET', KEYS[2], 'finished') then
  return 0
end
redis.call('HSET', KEYS[2], 'results_file', ARGV[4], 'finalized', ARGV[5])
redis.call('HDEL', KEYS[2], 'finalize_error')
redis.call('SREM', KEYS[3], ARGV[1])
for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""

# KEYS: finalizing. ARGV: job id, worker. Drops the claim only if that worker holds it.
_RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


def awaiting(store: JobStore) -> list[str]:
    """Settled jobs whose results file is not written yet."""
    return sorted(job_id.decode() for job_id in cast(set[bytes], store.client.smembers(store.keys.finalize)))


def release(store: JobStore, job_id: str, worker: str) -> bool:
    """Drop ``worker``'s finalization claim of the job; True for the one caller that removed it."""
    return bool(store.client.eval(_RELEASE, 1, store.keys.finalizing, job_id, worker))


def reap_finalizers(store: JobStore) -> list[str]:
    """Drop the finalization claims of workers whose heartbeat has expired; returns those jobs' ids."""
    claims = {job.decode(): worker.decode() for job, worker in
              cast(dict[bytes, bytes], store.client.hgetall(store.keys.finalizing)).items()}
    reaped = []
    for job_id, worker in claims.items():
        if not store.client.exists(store.keys.worker(worker)) and release(store, job_id, worker):
            log.warning("worker %s is gone while writing job %s's results; another worker writes them", worker,
                        job_id)
            reaped.append(job_id)
    return reaped


def finalize(store: JobStore, job_id: str, worker: str) -> bool:
    """Write the job's results file if it awaits one and no other worker is writing it; True once written
    and committed here. A storage failure is recorded on the job (``finalize_error``) and raised."""
    if not store.client.sismember(store.keys.finalize, job_id):
        return False
    if not store.client.hsetnx(store.keys.finalizing, job_id, worker):
        return False
    try:
        settlement = store.settlement(job_id)
        if settlement is None:
            return False
        status = store.status(job_id)
        assert status.output_url is not None  # only jobs with an output folder are in the finalize set
        url = objectstore.join(status.output_url, RESULTS_FILE)
        started = time.monotonic()
        written = write_lines(result_lines(store, status), url)
        part = functools.partial(store.keys.job_part, job_id)
        keys = [store.keys.finalizing, store.job_key(job_id), store.keys.finalize, part("results"), part("attempts"),
                part("item_attempts"), part("verdicts"),
                *(store.shard_key(job_id, number) for number in range(status.shards))]
        committed = bool(store.client.eval(
            _COMMIT, len(keys), *keys, job_id, worker, settlement, url, time.time()))
    except DscbatchError as error:
        if store.client.exists(store.job_key(job_id)):
            store.client.hset(store.job_key(job_id), "finalize_error", str(error))
        raise
    finally:
        release(store, job_id, worker)
    if committed:
        log.info("job %s: wrote %d results to %s in %.1f s", job_id, written, url, time.monotonic() - started)
    return committed

"""Every Redis key dscbatch writes, in one place (``P`` is the settings' key prefix, ``DSCBATCH_KEY_PREFIX``).

Jobs (the ``jobs/store/`` package, the only module that reads or writes Redis)::

    P:jobs                      sorted set: job ids by creation time
    P:job:ID                    hash: the job record and its counters
    P:job:ID:shard:N            a shard's marker while some of its items have no result: a bitmap of its
                                positions (items in shard order) that have one; its payload is in the work
                                folder (``jobs/workfolder.py``)
    P:job:ID:parts              list: the job's committed result parts in commit order (``jobs/parts.py``)
    P:job:ID:voided             set: indices whose committed result ``retry`` voided, until a new one commits
    P:job:ID:failed             set: indices of items that failed in a worker (what ``retry`` runs again)
    P:job:ID:retry              hash: index -> the shard item of a retryable failure
    P:job:ID:attempts           hash: shard key -> deliveries claimed
    P:job:ID:item_attempts      hash: item key -> runs of a suspected poison request
    P:job:ID:verify             hash: index -> ``verify`` spec, only of a job submitted by an earlier version (the
                                specs are in the work folder now, ``jobs/workfolder.py``)
    P:job:ID:verify_at          hash: index -> the part holding its result, while it awaits its verdict
    P:job:ID:verdicted          bitmap: the indices that have their verification record (first wins), until the
                                results file is written
    P:job:ID:verdicts           hash: index -> its verification record, only until a worker moves it to a verdict
                                part in the work folder (``JobStore.flush_verdicts``)
    P:job:ID:verdict_parts      list: the job's verdict parts in the work folder, in flush order
    P:job:ID:ranges             hash: a job rendered on the cluster (``jobs.store.ranges``): ``plan`` (JSON),
                                ``count:N`` ("physical nonblank" lines of range N), ``done:N`` ("base n folded invalid":
                                its shard numbers, first-wins, duplicates folded, lines that are not requests),
                                ``saved:N`` (the same, once its shards are saved), ``refused:N`` (JSON list
                                of its bad lines' messages), ``runs:N`` (the sizes of range N's runs, one per
                                partition), ``bases`` (each range's first item index: where its ``verify`` specs
                                are found), ``failures:TASK`` and ``failed:TASK`` (how often render task TASK
                                failed, and JSON [worker, error, final] of its last failure); a merge task's
                                figures are under N = ranges + its partition (the ranges' own have no shards)
    P:job:ID:range_errors       bitmap: the item indices whose error record a render task stored (--skip-invalid)
    P:job:ID:events             pub/sub channel, not a key: "settled" (settle.lua), "finalized"
                                (finalize_commit.lua), "cancelled", "finalize_error"; what wakes a command that
                                waits on the job (``JobStore.events``), which still reads the record now and then
    P:verify:waiting            sorted set: "JOB:INDEX" of stored results awaiting a verdict, by when queued
    P:verdicts:unflushed        sorted set: jobs with records in their verdicts hash, by when the oldest came
    P:verdicts:flush            string: the worker moving verdict records to the work folder now (expires)
    P:finalize                  set: settled jobs with an output folder whose results file is not written yet
    P:finalizing                hash: job id -> the worker writing its results file
    P:claims                    hash: [worker, shard key] -> job id, the shards workers are running
    P:render_claims             hash: [worker, range task] -> job id, the render tasks workers are running
                                (``jobs.store.ranges.range_task``: "JOB:count:N", "JOB:render:N", "JOB:merge:N")
    P:repair:QUEUE              string: the worker looking for its queue's stranded shards (``workers/repair.py``)
    P:repair:QUEUE:suspects     hash: shard key -> when it was first seen stranded

Processes::

    P:worker:HOST               a GPU worker's heartbeat (JSON, expires)
    P:executor:HOST             an executor's heartbeat (JSON, expires)
    P:retention_sweep           string: the worker running the retention sweep (expires)

Batch API (``server/``)::

    P:apikeys                   hash: key name -> its record; P:apikey_hashes: key hash -> name
    P:KIND:ID                   hash: a file's or batch's record (KIND is ``file`` or ``batch``)
    P:owner:NAME:KINDs          sorted set: the ids one API key owns
    P:batches:active            sorted set: the batches that have not ended (in_progress, cancelling), by creation
    P:batches:advance           string: the server advancing batches now (``server/advancer.py``), expires

Celery's own keys are its queues (``P.MODEL``, ``P.executor``) and kombu's ``unacked`` and ``unacked_index``
(:data:`UNACKED`, :data:`UNACKED_INDEX`; read and restored by ``jobs/store/deliveries.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

# kombu's Redis transport: every delivered, unacknowledged message (delivery tag -> JSON [message, exchange,
# routing key]) and its delivery time (kombu.transport.redis.Channel.unacked_key and unacked_index_key; dscbatch
# sets no global_keyprefix, so they are shared by every prefix on one Redis).
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"

# The per-job keys beside the record (``P:job:ID:SUFFIX``); a job's deletion removes them all.
# ``verify`` is the hash of ``verify`` specs that earlier versions kept in Redis (now in the work folder).
JOB_KEY_SUFFIXES = ("parts", "voided", "failed", "retry", "attempts", "item_attempts", "verify", "verify_at",
                    "verdicts", "verdicted", "verdict_parts", "ranges", "range_errors")


@dataclass(frozen=True)
class Keys:
    prefix: str

    # Jobs

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def job_events(self, job_id: str) -> str:
        """The job's pub/sub channel (the Lua scripts name it from the job's key: KEYS[n] .. ':events')."""
        return f"{self.job(job_id)}:events"

    def job_part(self, job_id: str, suffix: str) -> str:
        """``P:job:ID:SUFFIX``, one of ``JOB_KEY_SUFFIXES``."""
        assert suffix in JOB_KEY_SUFFIXES, suffix
        return f"{self.job(job_id)}:{suffix}"

    def job_parts(self, job_id: str) -> list[str]:
        return [self.job_part(job_id, suffix) for suffix in JOB_KEY_SUFFIXES]

    def shard(self, job_id: str, number: int) -> str:
        return f"{self.job(job_id)}:shard:{number}"

    def parse_shard(self, key: str) -> tuple[str, int]:
        """(job id, shard number) of a key made by :meth:`shard`."""
        job, _, number = key.rpartition(":shard:")
        return job.removeprefix(f"{self.prefix}:job:"), int(number)

    def shards_pattern(self, job_id: str) -> str:
        return f"{self.job(job_id)}:shard:*"

    @property
    def verify_waiting(self) -> str:
        return f"{self.prefix}:verify:waiting"

    @property
    def verdicts_unflushed(self) -> str:
        return f"{self.prefix}:verdicts:unflushed"

    @property
    def verdict_flush(self) -> str:
        return f"{self.prefix}:verdicts:flush"

    @property
    def finalize(self) -> str:
        return f"{self.prefix}:finalize"

    @property
    def finalizing(self) -> str:
        return f"{self.prefix}:finalizing"

    @property
    def claims(self) -> str:
        return f"{self.prefix}:claims"

    @property
    def render_claims(self) -> str:
        return f"{self.prefix}:render_claims"

    def repair_lock(self, queue: str) -> str:
        return f"{self.prefix}:repair:{queue}"

    def repair_suspects(self, queue: str) -> str:
        return f"{self.repair_lock(queue)}:suspects"

    # Processes

    def worker(self, hostname: str) -> str:
        return f"{self.prefix}:worker:{hostname}"

    @property
    def workers_pattern(self) -> str:
        return f"{self.prefix}:worker:*"

    def executor(self, hostname: str) -> str:
        return f"{self.prefix}:executor:{hostname}"

    @property
    def executors_pattern(self) -> str:
        return f"{self.prefix}:executor:*"

    @property
    def retention_sweep(self) -> str:
        return f"{self.prefix}:retention_sweep"

    # Batch API

    @property
    def api_keys(self) -> str:
        return f"{self.prefix}:apikeys"

    @property
    def api_key_hashes(self) -> str:
        return f"{self.prefix}:apikey_hashes"

    def record(self, kind: str, record_id: str) -> str:
        return f"{self.prefix}:{kind}:{record_id}"

    def owned(self, owner: str, kind: str) -> str:
        return f"{self.prefix}:owner:{owner}:{kind}s"

    @property
    def batches_active(self) -> str:
        return f"{self.prefix}:batches:active"

    @property
    def batches_advance(self) -> str:
        return f"{self.prefix}:batches:advance"

    # Celery queues

    @property
    def queues_prefix(self) -> str:
        """What this deployment's queue names start with (another prefix's queues may share the Redis)."""
        return f"{self.prefix}."

    def queue(self, name: str) -> str:
        """The queue ``P.NAME``: a model's (``jobs.submission.queue_name``), or ``executor``."""
        return self.queues_prefix + name

"""Stranded shards: a running job's shard that exists but that nothing will ever run.

A shard runs while its message is on its queue, delivered (kombu's ``unacked`` hash, see ``reaper``) or claimed
by a worker. A Redis node crash with ``appendfsync everysec`` loses the last second or two of writes: a message
queued or requeued in that second can be gone while the shard's payload, written earlier, stays. Nothing would
run that shard again, and its job would never finish.

So the workers' housekeeping looks (one worker of each queue every ``REPAIR_SECONDS``, a lock in Redis) at each
running job of the queue it serves that is older than ``REPAIR_GRACE_SECONDS``: a shard that is on no queue, in no
delivery and in no claim is a suspect (kept in Redis with when it was first seen), and a suspect still stranded at
a look ``REPAIR_GRACE_SECONDS`` or more later is queued again (the grace covers a submission still queueing its
shards, and a message between kombu's pop and its ``unacked`` entry). A stranded shard runs again within
about ``REPAIR_GRACE_SECONDS + 2 * REPAIR_SECONDS``.
Results are stored first-wins, so a shard that runs twice still leaves one result per item.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from dscbatch.jobs.store import JobStore
from dscbatch.workers import reaper

log = logging.getLogger(__name__)

REPAIR_GRACE_SECONDS = 30.0
# At most one look this often, whatever the number of workers.
REPAIR_SECONDS = 10


def _queued_shards(store: JobStore, queue: str) -> set[str]:
    """The shard keys of the messages waiting on ``queue``."""
    messages = (reaper.message_shard(json.loads(raw)) for raw in store.queued_messages(queue))
    return {shard_key for shard_key in messages if shard_key is not None}


class Repairer:
    """Finds the stranded shards of ``queue``'s jobs (the queue its worker serves) and queues them again;
    ``requeue(job id, shard key)`` puts one on that queue."""

    def __init__(self, store: JobStore, hostname: str, queue: str, requeue: Callable[[str, str], None],
                 grace: float = REPAIR_GRACE_SECONDS) -> None:
        self.store = store
        self.hostname = hostname
        self.queue = queue
        self.requeue = requeue
        self.grace = grace

    def stranded(self) -> list[tuple[str, str]]:
        """(job id, shard key) of each shard of the queue's running jobs that is queued, delivered and claimed
        nowhere."""
        cutoff = time.time() - self.grace
        jobs = [job for job in self.store.statuses(self.store.job_ids())
                if job.queue == self.queue and not job.settled and job.created <= cutoff]
        if not jobs:
            return []
        busy = _queued_shards(self.store, self.queue)
        busy |= {delivery.shard_key for delivery in reaper.deliveries(self.store)}
        busy |= self.store.claimed_shards()
        return [(job.id, key) for job in jobs for key in self.store.existing_shards(job.id, job.shards)
                if key not in busy]

    def repair(self) -> list[str]:
        """Queue again the shards stranded at two looks ``grace`` apart; returns their keys. At most one worker
        of the queue looks every ``REPAIR_SECONDS`` (the queue is read whole)."""
        store = self.store
        if not store.lock(store.keys.repair_lock(self.queue), self.hostname, REPAIR_SECONDS):
            return []
        now = time.time()
        stranded = {key: job_id for job_id, key in self.stranded()}
        seen = store.repair_suspects(self.queue)
        first_seen = {key: seen.get(key, now) for key in stranded}
        repaired = [key for key, first in first_seen.items() if now - first >= self.grace]
        for key in repaired:
            log.warning("job %s: shard %s is on no queue and run by no worker (lost in a Redis restart?); queueing "
                        "it again", stranded[key], key)
            self.requeue(stranded[key], key)
            del first_seen[key]
        store.replace_repair_suspects(self.queue, first_seen)
        return repaired

"""The worker's heartbeat thread: tells Redis the worker is alive, watches the engine, requeues orphans.

A worker that is SIGKILLed leaves its shard unacknowledged; Redis would hand it out again only after the
visibility timeout (an hour by default). Each shard a worker runs is claimed in Redis instead, and every
live worker's heartbeat requeues the claims of workers whose heartbeat expired, within about
``HEARTBEAT_TTL_SECONDS + HEARTBEAT_SECONDS``, and the deliveries no live worker claimed (``reaper``: a
worker killed between a shard's delivery and its claim). Results are stored first-wins, so a shard run twice (the
requeued copy and the later redelivery) still leaves one result per item.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from dscbatch.core.heartbeat_loop import HEARTBEAT_TTL_SECONDS, HeartbeatLoop
from dscbatch.jobs.finalize import reap_finalizers
from dscbatch.jobs.store import JobStore, StoreUnavailable
from dscbatch.workers import reaper
from dscbatch.workers.batching import ENGINE_DIED_EXIT
from dscbatch.workers.engine import Serving
from dscbatch.workers.observer import WorkerObserver
from dscbatch.workers.tasks import Requeue

log = logging.getLogger(__name__)


class Heartbeat(HeartbeatLoop):
    unavailable = (StoreUnavailable,)

    def __init__(self, store: JobStore, hostname: str, info: dict[str, Any], engine: Serving | None,
                 observer: WorkerObserver, requeue: Requeue, running: Callable[[], set[str]]) -> None:
        super().__init__(name="dscbatch-heartbeat", what="heartbeat")
        self.store = store
        self.hostname = hostname
        self.info = info
        self.engine = engine
        self.observer = observer
        self.requeue = requeue
        self.running = running

    def beat(self) -> None:
        if self.engine is not None and not self.engine.alive():  # None: a render-only worker
            # A dead engine child never answers: the shard in flight would wait forever. Exit instead;
            # the claim is requeued by the next worker's heartbeat.
            log.critical("the vLLM engine's process died; exiting with status %d", ENGINE_DIED_EXIT)
            os._exit(ENGINE_DIED_EXIT)
        self.store.beat(self.hostname, {**self.info, "seen": time.time()}, ttl=HEARTBEAT_TTL_SECONDS)
        self.observer.heartbeat(HEARTBEAT_TTL_SECONDS)

    def upkeep(self) -> None:
        self.requeue_orphans()
        self.requeue_stale_claims()

    def requeue_stale_claims(self) -> None:
        """This worker's own claims of shards it no longer runs: a Redis that restarted from an older state (a
        crash that lost the tail of its append-only file) brings back claims the worker has since released.
        Nothing else would free them while the worker lives: it would hold those shards for ever."""
        for job_id, shard_key in self.store.claims_of(self.hostname):
            # A shard is in ``running`` from before its claim until after its release: one not in it is stale.
            if shard_key not in self.running() and self.store.release(self.hostname, shard_key):
                log.warning("%s: claimed in this worker's name but not running here (Redis restarted from an older "
                            "state?); requeueing it", shard_key)
                self.requeue(job_id, shard_key)

    def requeue_orphans(self) -> None:
        # Results files first: a requeued shard of a settled job finds the dead writer's claim gone.
        reap_finalizers(self.store)
        delivered = reaper.deliveries(self.store)
        for worker, job_id, shard_key in self.store.orphaned_claims():
            if self.store.release(worker, shard_key):  # only one live worker wins each orphan
                log.warning("worker %s is gone; requeueing its shard %s", worker, shard_key)
                reaper.forget(self.store, shard_key, delivered)  # its delivery could only come back later
                self.requeue(job_id, shard_key)
        for worker, task in self.store.orphaned_range_claims():
            if self.store.release_range(worker, task):
                log.warning("worker %s is gone; queueing its render task %s again", worker, task)
                reaper.restore(self.store, task, delivered)
        # Delivered to a worker that died before claiming it: back on the queue, not after the visibility timeout.
        reaper.requeue_unclaimed(self.store, delivered, HEARTBEAT_TTL_SECONDS,
                                 self.store.live_claims() | self.store.live_range_claims())

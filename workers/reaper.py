"""Deliveries no live worker claims: closes the window between a shard's delivery and its claim.

Celery's Redis transport (kombu) keeps every delivered, unacknowledged message in the hash ``unacked``
(delivery tag -> JSON ``[message, exchange, routing key]``) and its delivery time in the sorted set
``unacked_index``; it hands a message out again only after the visibility timeout (an hour by default). A
worker claims a shard in the milliseconds after its delivery (``JobStore.claim``), so a delivery older than a
heartbeat's lifetime that no live worker claims belongs to a worker that died before claiming it. Every
live worker's heartbeat puts such deliveries back on their queue (``requeue_unclaimed``), as kombu itself
would after the visibility timeout; a Lua script (``jobs/store/restore_delivery.lua``, run by
``JobStore.restore_delivery``) moves each one, so one reaper wins it.

When a dead worker's claim is requeued (``Heartbeat.requeue_orphans``), its delivery is dropped
(``forget``), so the shard is not queued twice. Render tasks (``jobs.clusterrender``) are claimed the same way
(``JobStore.claim_range``); the delivery of a dead worker's render task is put back on its queue as it is
(``restore``), and one no live worker claims is requeued like a shard's.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dscbatch.core.celery_app import RENDER_RANGE, RUN_SHARD
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.store.ranges import range_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    tag: str
    entry: str  # the unacked hash's value, as read
    message: dict[str, Any]
    queue: str
    shard_key: str  # the claimed task: a shard key, or a render task (``range_task``)
    delivered: float
    renders: bool  # a render task's delivery (else a shard's)


def message_task(message: dict[str, Any]) -> tuple[str, bool] | None:
    """What a dscbatch message runs, as it is claimed (a shard key, or a render task) and whether it is a render
    task; None for any other message."""
    task = message.get("headers", {}).get("task")
    if task not in (RUN_SHARD, RENDER_RANGE):
        return None
    body = message.get("body", "")
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body).decode()
    args = json.loads(body)[0]
    if task == RUN_SHARD:
        return str(args[1]), False
    return range_task(str(args[0]), int(args[1]), int(args[2])), True


def message_shard(message: dict[str, Any]) -> str | None:
    """The shard a dscbatch message runs, or None for any other message (a render task's too)."""
    task = message_task(message)
    return None if task is None or task[1] else task[0]


def deliveries(store: JobStore) -> list[Delivery]:
    """The unacknowledged deliveries of this prefix's queues."""
    found = []
    for tag, entry, delivered in store.unacked_deliveries():
        message, _, queue = json.loads(entry)
        if not str(queue).startswith(store.keys.queues_prefix):
            continue  # another deployment's queue on the same Redis
        task = message_task(message)
        if task is not None:
            key, renders = task
            found.append(Delivery(tag, entry.decode(), message, str(queue), key, delivered, renders))
    return found


def _move(store: JobStore, delivery: Delivery, requeue: bool) -> bool:
    message = ""
    if requeue:
        redelivered = {**delivery.message, "headers": {**delivery.message.get("headers", {}), "redelivered": True}}
        message = json.dumps(redelivered)
    return store.restore_delivery(delivery.queue, delivery.tag, delivery.entry, message)


def forget(store: JobStore, shard_key: str, found: Iterable[Delivery]) -> None:
    """Drop the deliveries of a shard that is being queued again (its claimer died)."""
    for delivery in found:
        if delivery.shard_key == shard_key:
            _move(store, delivery, requeue=False)


def restore(store: JobStore, task: str, found: Iterable[Delivery]) -> None:
    """Put the deliveries of a render task whose worker died back on their queue."""
    for delivery in found:
        if delivery.renders and delivery.shard_key == task:
            _move(store, delivery, requeue=True)


def requeue_unclaimed(store: JobStore, found: Iterable[Delivery], older_than: float,
                      live_claims: set[str]) -> list[str]:
    """Put back on their queues the deliveries over ``older_than`` seconds old whose shard (or render task) no
    live worker claims; returns their shard keys (and render tasks)."""
    requeued = []
    cutoff = time.time() - older_than
    for delivery in found:
        if delivery.delivered <= cutoff and delivery.shard_key not in live_claims and \
                _move(store, delivery, requeue=True):
            log.warning("%s %s was delivered %.0f s ago and no live worker claims it; requeueing it",
                        "render task" if delivery.renders else "shard", delivery.shard_key,
                        time.time() - delivery.delivered)
            requeued.append(delivery.shard_key)
    return requeued

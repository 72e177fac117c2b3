"""What the broker holds for each queue, read the way kombu's Redis transport stores it.

kombu keeps a queue's waiting messages in Redis lists: the queue's name for priority 0, and
``<queue>\\x06\\x16<step>`` for the other priority steps. It LPUSHes and RPOPs, so a list's last element
is its oldest message. A delivered message waits for its acknowledgement in the ``unacked`` hash
(delivery tag -> JSON ``[message, exchange, routing key]``), the routing key being the queue's name.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from kombu.transport.redis import PRIORITY_STEPS, Channel

from dscbatch.core.celery_app import ENQUEUED_HEADER
from dscbatch.jobs.store import JobStore


@dataclass(frozen=True)
class QueueDepth:
    pending: int  # shards waiting for a worker
    unacked: int  # shards delivered to a worker and not acknowledged yet: running, or lost with their worker
    oldest_age: float  # seconds the oldest waiting shard has been queued; 0 when none waits


def priority_lists(queue: str) -> list[str]:
    return [f"{queue}{Channel.sep}{step}" if step else queue for step in PRIORITY_STEPS]


def _enqueued(message: bytes | None) -> float | None:
    if message is None:
        return None
    value = json.loads(message).get("headers", {}).get(ENQUEUED_HEADER)
    return float(value) if value is not None else None


def read_queues(store: JobStore, queues: Sequence[str]) -> dict[str, QueueDepth]:
    lists, unacked_messages = store.queue_lists([key for queue in queues for key in priority_lists(queue)])
    unacked = Counter(str(json.loads(entry)[2]) for entry in unacked_messages)
    now = time.time()
    depths: dict[str, QueueDepth] = {}
    per_queue = len(PRIORITY_STEPS)
    for number, queue in enumerate(queues):
        replies = lists[number * per_queue:(number + 1) * per_queue]
        enqueued = [at for at in (_enqueued(last) for _, last in replies) if at is not None]
        depths[queue] = QueueDepth(sum(length for length, _ in replies), unacked[queue],
                                   max(0.0, now - min(enqueued)) if enqueued else 0.0)
    return depths

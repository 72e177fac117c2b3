"""The broker's side of Redis as the store reads it: kombu's queues (lists) and its unacknowledged deliveries
(``unacked``, ``unacked_index``; ``core/keys.py``), for ``workers.reaper``, ``workers.repair`` and
``monitoring.broker_queues``. ``restore_delivery.lua`` moves one delivery back onto its queue (or drops it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from dscbatch.core.keys import UNACKED, UNACKED_INDEX
from dscbatch.jobs.store import scripts
from dscbatch.jobs.store.base import StoreBase


class Deliveries(StoreBase):
    def unacked_deliveries(self) -> list[tuple[str, bytes, float]]:
        """(delivery tag, its ``unacked`` entry as read, delivery time) of every unacknowledged delivery, of any
        prefix's queue."""
        index = cast(list[tuple[bytes, float]], self.client.zrange(UNACKED_INDEX, 0, -1, withscores=True))
        if not index:
            return []
        entries = cast(list[bytes | None], self.client.hmget(UNACKED, [tag for tag, _ in index]))
        return [(tag.decode(), entry, delivered) for (tag, delivered), entry in zip(index, entries, strict=True)
                if entry is not None]

    def restore_delivery(self, queue: str, tag: str, entry: str, message: str) -> bool:
        """Remove the delivery ``tag`` if its entry is still ``entry`` and push ``message`` onto ``queue`` (none if
        empty), in one step (``restore_delivery.lua``); True for the one caller that moved it."""
        return bool(self.client.eval(scripts.source("restore_delivery"), 3, UNACKED, UNACKED_INDEX, queue, tag,
                                     entry, message))

    def queued_messages(self, queue: str) -> list[bytes]:
        """The messages waiting on the list ``queue`` (kombu's JSON), newest first."""
        return cast(list[bytes], self.client.lrange(queue, 0, -1))

    def queue_lists(self, lists: Sequence[str]) -> tuple[list[tuple[int, bytes | None]], list[bytes]]:
        """In one round trip: (length, last element) of each list in ``lists``, and every ``unacked`` entry."""
        pipe = self.client.pipeline(transaction=False)
        for key in lists:
            pipe.llen(key)
            pipe.lindex(key, -1)
        pipe.hvals(UNACKED)
        *replies, unacked = pipe.execute()
        return [(int(replies[i]), replies[i + 1]) for i in range(0, len(replies), 2)], cast(list[bytes], unacked)

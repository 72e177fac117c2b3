"""The stranded-shard repair's state (``workers.repair``): which shards still have a marker, and the suspects of a
queue with when each was first seen stranded (``P:repair:QUEUE:suspects``; ``core/keys.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from dscbatch.jobs.store.base import StoreBase


class Suspects(StoreBase):
    def existing_shards(self, job_id: str, shards: int) -> list[str]:
        """The keys of the job's first ``shards`` shards whose marker exists (items still without a result)."""
        keys = [self.keys.shard(job_id, number) for number in range(shards)]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        return [key for key, exists in zip(keys, pipe.execute(), strict=True) if exists]

    def repair_suspects(self, queue: str) -> dict[str, float]:
        """Shard key -> when it was first seen stranded, for ``queue``."""
        seen = cast(dict[bytes, bytes], self.client.hgetall(self.keys.repair_suspects(queue)))
        return {key.decode(): float(value) for key, value in seen.items()}

    def replace_repair_suspects(self, queue: str, first_seen: Mapping[str, float]) -> None:
        """Make ``first_seen`` the queue's suspects, in one transaction."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.keys.repair_suspects(queue))
        if first_seen:
            pipe.hset(self.keys.repair_suspects(queue), mapping=dict[Any, Any](first_seen))
        pipe.execute()

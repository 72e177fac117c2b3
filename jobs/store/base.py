"""What the store's mixins (one Redis concept per module) share with :class:`~dscbatch.jobs.store.JobStore`."""

from __future__ import annotations

import json
from typing import cast

import redis

from dscbatch.core.keys import Keys

# The errors of a Redis that is down or unreachable, for the loops that log them and retry: modules outside the
# store catch this name and never import redis.
StoreUnavailable = redis.RedisError


class StoreBase:
    """The Redis client and key schema that the store's methods use (set by ``JobStore.__init__``)."""

    client: redis.Redis  # the store's own; tests and benchmarks read Redis through it, nothing else in dscbatch does
    keys: Keys
    prefix: str

    def ping(self) -> None:
        """Return if Redis answers; raise :data:`StoreUnavailable` if not."""
        self.client.ping()

    def answers(self) -> bool:
        """Whether Redis answers."""
        try:
            return bool(self.client.ping())
        except StoreUnavailable:
            return False

    def announce(self, job_id: str, event: str) -> None:
        """Publish ``event`` on the job's channel (``JobStore.events``; the Lua scripts publish their own)."""
        self.client.publish(self.keys.job_events(job_id), event)

    def lock(self, key: str, holder: str, seconds: int) -> bool:
        """Take the expiring lock ``key`` for ``holder`` unless someone holds it (``SET NX EX``); True if taken."""
        return bool(self.client.set(key, holder, nx=True, ex=seconds))

    def unlock(self, key: str) -> None:
        self.client.delete(key)

    def _claims_in(self, key: str) -> list[tuple[str, str, str, bool]]:
        """(worker, job id, claimed task, whether the worker's heartbeat is alive) of every claim in the claims
        hash ``key`` (field: JSON [worker, task], value: job id)."""
        claims = [(*json.loads(field), job.decode()) for field, job in
                  cast(dict[bytes, bytes], self.client.hgetall(key)).items()]
        pipe = self.client.pipeline(transaction=False)
        for worker, _, _ in claims:
            pipe.exists(self.keys.worker(worker))
        return [(worker, job_id, task, bool(alive)) for (worker, task, job_id), alive in
                zip(claims, pipe.execute(), strict=True)]

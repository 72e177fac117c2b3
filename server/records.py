"""Small per-owner records in Redis (file and batch metadata), listed newest first with an ``after`` cursor.

Keys (``P`` is the settings' key prefix, ``KIND`` is ``file`` or ``batch``)::

    P:KIND:ID               hash: the record, its ``owner`` among the fields
    P:owner:OWNER:KINDs     sorted set of the owner's ids by creation time (microseconds)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import cast

import redis
from redis.typing import EncodableT, FieldT

from dscbatch.core.errors import ApiError, NotFoundApiError
from dscbatch.core.keys import Keys

Fields = Mapping[str, str | int | float]


def _mapping(fields: Fields) -> dict[FieldT, EncodableT]:
    return dict(fields.items())


class OwnedRecords:
    def __init__(self, client: redis.Redis, prefix: str, kind: str) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.kind = kind

    def key(self, record_id: str) -> str:
        return self.keys.record(self.kind, record_id)

    def _index(self, owner: str) -> str:
        return self.keys.owned(owner, self.kind)

    def create(self, record_id: str, owner: str, created: int, fields: Fields) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.key(record_id), mapping=_mapping({**fields, "owner": owner, "created_at": created}))
        pipe.zadd(self._index(owner), {record_id: time.time()})  # finer than created_at: newest first, always
        pipe.execute()

    def get(self, record_id: str, owner: str) -> dict[str, str]:
        """The record, if ``owner`` owns it; another owner's id reads as unknown."""
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.key(record_id)))
        record = {key.decode(): value.decode() for key, value in raw.items()}
        if record.get("owner") != owner:
            raise NotFoundApiError(f"No such {self.kind}: {record_id!r}", param=f"{self.kind}_id",
                                   code=f"{self.kind}_not_found")
        return record

    def read(self, record_id: str) -> dict[str, str]:
        """The record whoever owns it (empty if there is none): for the server's own background work."""
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.key(record_id)))
        return {key.decode(): value.decode() for key, value in raw.items()}

    def update(self, record_id: str, fields: Fields) -> None:
        self.client.hset(self.key(record_id), mapping=_mapping(fields))

    def delete(self, record_id: str, owner: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.key(record_id))
        pipe.zrem(self._index(owner), record_id)
        pipe.execute()

    def page(self, owner: str, limit: int, after: str | None) -> tuple[list[str], bool]:
        """Up to ``limit`` of the owner's ids, newest first, after the id ``after``; and whether more follow."""
        start = 0
        if after is not None:
            rank = self.client.zrevrank(self._index(owner), after)
            if rank is None:
                raise ApiError(f"after: no {self.kind} {after!r} to list from", param="after")
            start = int(cast(int, rank)) + 1
        found = cast(list[bytes], self.client.zrevrange(self._index(owner), start, start + limit))
        ids = [record_id.decode() for record_id in found]
        return ids[:limit], len(ids) > limit

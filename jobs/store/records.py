"""The Batch API's records in Redis (``server/``): small per-owner records (file and batch metadata) listed newest
first with an ``after`` cursor, the API keys' records, and the index of the batches that have not ended.

Keys (``P`` is the settings' key prefix, ``KIND`` is ``file`` or ``batch``)::

    P:KIND:ID               hash: the record, its ``owner`` among the fields
    P:owner:OWNER:KINDs     sorted set of the owner's ids by creation time (microseconds)
    P:apikeys               hash: key name -> its record (JSON); P:apikey_hashes: key hash -> name
    P:batches:active        sorted set: the batches that have not ended, by creation
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import cast

import redis
from redis.typing import EncodableT, FieldT

from dscbatch.core.errors import ApiError, NotFoundApiError
from dscbatch.core.keys import Keys
from dscbatch.jobs.store.base import StoreBase

Fields = Mapping[str, str | int | float]


def _mapping(fields: Fields) -> dict[FieldT, EncodableT]:
    return dict(fields.items())


class OwnedRecords:
    """One KIND's records (``JobStore.owned_records``)."""

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


class ApiKeyRecords:
    """The API keys' records: name -> record (JSON), and the hash of each key -> its name (``JobStore.api_keys``)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.names = Keys(prefix).api_keys
        self.hashes = Keys(prefix).api_key_hashes

    def add(self, name: str, digest: str, record: str) -> bool:
        """Store a new key's record under ``name`` and its hash; False (nothing stored) if ``name`` exists."""
        if not self.client.hsetnx(self.names, name, record):
            return False
        self.client.hset(self.hashes, digest, name)
        return True

    def all(self) -> dict[str, str]:
        """Name -> record of every key."""
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.names))
        return {name.decode(): value.decode() for name, value in raw.items()}

    def get(self, name: str) -> str | None:
        value = cast(bytes | None, self.client.hget(self.names, name))
        return None if value is None else value.decode()

    def remove(self, name: str, digest: str) -> None:
        """Drop the key ``name`` whose hash is ``digest``, in one transaction."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.hashes, digest)
        pipe.hdel(self.names, name)
        pipe.execute()

    def by_digest(self, digest: str) -> str | None:
        """The record of the key whose hash is ``digest``, or None."""
        name = self.client.hget(self.hashes, digest)
        value = None if name is None else self.client.hget(self.names, cast(bytes, name))
        return None if value is None else cast(bytes, value).decode()


class Records(StoreBase):
    def owned_records(self, kind: str) -> OwnedRecords:
        """The per-owner records of ``kind`` (``file``, ``batch``)."""
        return OwnedRecords(self.client, self.prefix, kind)

    def api_keys(self) -> ApiKeyRecords:
        return ApiKeyRecords(self.client, self.prefix)

    def activate_batch(self, batch_id: str) -> None:
        """Add the batch to the batches that have not ended (``P:batches:active``)."""
        self.client.zadd(self.keys.batches_active, {batch_id: time.time()})

    def deactivate_batch(self, batch_id: str) -> None:
        self.client.zrem(self.keys.batches_active, batch_id)

    def active_batches(self) -> list[str]:
        """The batches that have not ended, oldest first."""
        active = cast(list[bytes], self.client.zrange(self.keys.batches_active, 0, -1))
        return [batch_id.decode() for batch_id in active]

"""API keys: each shown once when created; Redis keeps only its SHA-256 (a key has 256 random bits, so a fast
hash is enough) and the name it was created under.

Keys (``P`` is the settings' key prefix)::

    P:apikeys          hash: name -> {"owner", "sha256", "created"} (JSON)
    P:apikey_hashes    hash: sha256 -> name

``owner`` is a random id that files and batches are stored under, so a name revoked and created again does not
inherit the old key's objects.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import cast

import redis

from dscbatch.core.errors import ApiKeyError, AuthenticationApiError
from dscbatch.core.keys import Keys

KEY_PREFIX = "dsc-"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class ApiKeyInfo:
    name: str
    owner: str
    created: float


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.names = Keys(prefix).api_keys
        self.hashes = Keys(prefix).api_key_hashes

    def create(self, name: str) -> str:
        """A new key for ``name``, returned once; only its hash is stored."""
        if not NAME_PATTERN.match(name):
            raise ApiKeyError(f"api key name {name!r}: use 1 to 64 letters, digits, '_', '.' or '-'")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        digest = _digest(key)
        record = {"owner": secrets.token_hex(8), "sha256": digest, "created": time.time()}
        if not self.client.hsetnx(self.names, name, json.dumps(record)):
            raise ApiKeyError(f"an api key named {name!r} exists (revoke it first)")
        self.client.hset(self.hashes, digest, name)
        return key

    def list(self) -> list[ApiKeyInfo]:
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.names))
        infos = [ApiKeyInfo(name.decode(), (record := json.loads(value))["owner"], record["created"])
                 for name, value in raw.items()]
        return sorted(infos, key=lambda info: info.created)

    def revoke(self, name: str) -> None:
        value = self.client.hget(self.names, name)
        if value is None:
            raise ApiKeyError(f"no api key named {name!r} (see `dscbatch api-key list`)")
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.hashes, json.loads(cast(bytes, value))["sha256"])
        pipe.hdel(self.names, name)
        pipe.execute()

    def owner(self, authorization: str | None) -> str:
        """The owner id of the key in an ``Authorization: Bearer KEY`` header; 401 for none, wrong or revoked."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthenticationApiError("Missing API key: send the header 'Authorization: Bearer KEY' "
                                         "(create a key with `dscbatch api-key create NAME`)",
                                         code="invalid_api_key")
        name = self.client.hget(self.hashes, _digest(key.strip()))
        value = None if name is None else self.client.hget(self.names, cast(bytes, name))
        if value is None:
            raise AuthenticationApiError("Incorrect API key provided (unknown or revoked)", code="invalid_api_key")
        return str(json.loads(cast(bytes, value))["owner"])

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

from dscbatch.core.errors import ApiKeyError, AuthenticationApiError
from dscbatch.jobs.store import JobStore

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
    def __init__(self, store: JobStore) -> None:
        self.records = store.api_keys()  # jobs/store/records.py

    def create(self, name: str) -> str:
        """A new key for ``name``, returned once; only its hash is stored."""
        if not NAME_PATTERN.match(name):
            raise ApiKeyError(f"api key name {name!r}: use 1 to 64 letters, digits, '_', '.' or '-'")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        digest = _digest(key)
        record = {"owner": secrets.token_hex(8), "sha256": digest, "created": time.time()}
        if not self.records.add(name, digest, json.dumps(record)):
            raise ApiKeyError(f"an api key named {name!r} exists (revoke it first)")
        return key

    def list(self) -> list[ApiKeyInfo]:
        infos = [ApiKeyInfo(name, (record := json.loads(value))["owner"], record["created"])
                 for name, value in self.records.all().items()]
        return sorted(infos, key=lambda info: info.created)

    def revoke(self, name: str) -> None:
        value = self.records.get(name)
        if value is None:
            raise ApiKeyError(f"no api key named {name!r} (see `dscbatch api-key list`)")
        self.records.remove(name, json.loads(value)["sha256"])

    def owner(self, authorization: str | None) -> str:
        """The owner id of the key in an ``Authorization: Bearer KEY`` header; 401 for none, wrong or revoked."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthenticationApiError("Missing API key: send the header 'Authorization: Bearer KEY' "
                                         "(create a key with `dscbatch api-key create NAME`)",
                                         code="invalid_api_key")
        value = self.records.by_digest(_digest(key.strip()))
        if value is None:
            raise AuthenticationApiError("Incorrect API key provided (unknown or revoked)", code="invalid_api_key")
        return str(json.loads(value)["owner"])

"""Settings as one typed object, read from ``DSCBATCH_*`` environment variables; unknown names are errors."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from dscbatch.core.errors import SettingsError

ENV_PREFIX = "DSCBATCH_"
MAX_SHARDS_IN_FLIGHT = 16
# Reserved for the test suite's own variables, which are not settings.
TEST_ENV_PREFIX = "DSCBATCH_TEST_"


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> object:
    """Seconds from ``7d``, ``12h``, ``30m``, ``3600s`` or a plain number of seconds; other values unchanged."""
    if not isinstance(value, str):
        return value
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", value)
    if match is None:
        raise ValueError(f"expected a duration such as 7d, 12h, 30m or 3600s, got {value!r}")
    return int(match[1]) * DURATION_UNITS[match[2] or "s"]


Duration = Annotated[int, BeforeValidator(parse_duration), Field(ge=0)]


def redact_url(url: str) -> str:
    """``url`` with its password (and ACL user name) replaced, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"***@{host}{port}", parts.path, parts.query, parts.fragment))


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Seconds a delivered shard may run before Redis hands it to another worker: longer than the longest shard.
    visibility_timeout: Annotated[int, Field(ge=10)] = 3600
    # Seconds a worker told to stop (SIGTERM) waits for its running shard before handing the rest back.
    shutdown_timeout: Annotated[int, Field(ge=0)] = 600
    shard_max_requests: Annotated[int, Field(ge=1)] = 256
    shard_max_tokens: Annotated[int, Field(ge=1)] = 1 << 20
    # Shards one worker holds at once; each one's requests enter its engine as the batch has room. None: enough
    # to keep the engine's batch full (workers.batching.default_shards_in_flight).
    shards_in_flight: Annotated[int, Field(ge=1, le=MAX_SHARDS_IN_FLIGHT)] | None = None
    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = "dscbatch"
    # A folder (local path or fsspec URL) under which each job's results file is written, in a folder named by
    # the job id, when the job settles (``submit --output`` names a job's folder itself). None: no file.
    output_url: str | None = None
    # Where jobs keep their data outside Redis (shard payloads and result parts, jobs/workfolder.py): a folder
    # or fsspec URL that the submitting machine, every worker and every executor reach (S3 or GCS in a cluster).
    work_url: Annotated[str, Field(min_length=1, validate_default=True)] = "~/.cache/dscbatch/work"
    # Seconds a finished job stays in Redis (its record, and its results if it has no results file).
    job_retention: Duration = 7 * 86400
    # The sandbox that runs generated code (executor/sandbox.py): wall-clock seconds per program (CPU seconds
    # the same), its address-space limit, and the interpreter it runs (bound read-only inside).
    sandbox_timeout: Annotated[float, Field(gt=0, le=3600)] = 10.0
    sandbox_memory_mb: Annotated[int, Field(ge=64)] = 1024
    sandbox_python: str = "/usr/bin/python3"
    # Test dependencies of other languages (executor/toolchain.py): jars on the Java classpath (colon-separated;
    # DeepSeek's javatuples-1.2.jar) and a Go module folder (go.mod with vendor/ or go-vendor.tar.gz).
    sandbox_java_classpath: str = ""
    sandbox_go_module: str | None = None
    # Programs one executor runs at once. None: one per CPU core.
    executor_concurrency: Annotated[int, Field(ge=1)] | None = None
    # The languages an executor checks at start and serves (comma-separated codes, executor/languages.py);
    # empty: every supported language. Python is always served.
    executor_languages: str = ""
    # The Batch API server (`dscbatch serve`): where uploaded and result files live (a folder or fsspec URL),
    # the largest upload, and the most requests in one batch.
    files_url: Annotated[str, Field(min_length=1)] = "dscbatch-files"
    max_file_bytes: Annotated[int, Field(ge=1)] = 200_000_000
    max_batch_lines: Annotated[int, Field(ge=1)] = 50_000

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str) -> str:
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss"):
            raise ValueError(f"expected a redis:// or rediss:// URL, got {scheme or 'no'} scheme")
        return url

    @field_validator("work_url")
    @classmethod
    def _expand_home(cls, url: str) -> str:
        return os.path.expanduser(url) if url.startswith("~") else url

    @property
    def redacted_redis_url(self) -> str:
        return redact_url(self.redis_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ``DSCBATCH_<FIELD>`` variables, then ``overrides``; a misspelt variable is an error."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, value in env.items():
            if not name.startswith(ENV_PREFIX) or name.startswith(TEST_ENV_PREFIX):
                continue
            field = name[len(ENV_PREFIX):].lower()
            if field not in cls.model_fields:
                known = ", ".join(ENV_PREFIX + key.upper() for key in cls.model_fields)
                raise SettingsError(f"unknown setting {name} (known: {known})")
            values[field] = value
        values.update({key: value for key, value in overrides.items() if value is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            first = error.errors()[0]
            field = ENV_PREFIX + ".".join(str(part) for part in first["loc"]).upper()
            raise SettingsError(f"{field}: {first['msg'].removeprefix('Value error, ')}") from None

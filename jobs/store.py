"""Job state in Redis: the job record, shard payloads, and results kept exactly once per item.

Every key and its meaning are listed in ``core/keys.py`` (:class:`~dscbatch.core.keys.Keys`); nothing builds one
elsewhere.

A job *settles* (gets ``finished``) when every item has a result and every result that needs verification
has its verdicts: ``done + failed >= total`` and ``verified >= to_verify`` (``_SETTLE``, checked by both
scripts that store; :meth:`JobStatus.settled` is the same test in Python). Each settlement also bumps the
job's ``settlements`` generation (``retry`` unsettles a job) and, for a job with an output folder, adds it to
``P:finalize``.

Counters move only inside Lua scripts, in the same step that stores a result, so ``done + failed`` always
equals the number of stored results, whatever crashes or redeliveries happen around it.

A shard's payload lives only while some of its items have no result: the worker that finishes it deletes it
(``drop_shard``, which checks in the same step that every item has its result, so results that Redis lost in a
crash run again rather than go missing for good), and results are stored for a shard only while its payload
exists, so a late copy of a finished shard can never add a result after the job's results have left Redis
(``jobs.finalize``).
"""

from __future__ import annotations

import functools
import json
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.typing import EncodableT, FieldT

from dscbatch.core.errors import BrokerError, JobNotFoundError
from dscbatch.core.keys import Keys
from dscbatch.core.settings import Settings
from dscbatch.jobs import shard_codec

# The settle condition, shared by the scripts that store results and verdicts (KEYS[2] is the job). A job that
# settles gets its ``finished`` time (once per settlement; ``retry`` unsettles it), a new ``settlements``
# generation and, with an output folder, a place in the finalize set (``jobs.finalize``).
_SETTLE = """
local function settle(finalize, job_id)
  local c = redis.call('HMGET', KEYS[2], 'total', 'done', 'failed', 'to_verify', 'verified')
  if c[1] and tonumber(c[2] or 0) + tonumber(c[3] or 0) >= tonumber(c[1])
      and tonumber(c[5] or 0) >= tonumber(c[4] or 0) then
    if redis.call('HSETNX', KEYS[2], 'finished', redis.call('TIME')[1]) == 1 then
      redis.call('HINCRBY', KEYS[2], 'settlements', 1)
      if redis.call('HEXISTS', KEYS[2], 'output_url') == 1 then redis.call('SADD', finalize, job_id) end
    end
  end
end
"""

# KEYS: results, job, failed, waiting, retry, finalize set, and optionally the shard the results come from
# (nothing is stored once its payload is gone: another copy finished the shard, perhaps the job was finalized).
# ARGV: job id, then flat groups of (index, line, outcome, prompt, completion, cached, verify, retry item) where
# outcome is "done", "failed" (stays failed) or "retryable" (failed, and ``retry`` may run it again from the
# retry item), and verify is the item's "JOB:INDEX" member when its result awaits verification, else "".
_RECORD = _SETTLE + """
if KEYS[7] and redis.call('EXISTS', KEYS[7]) == 0 then return 0 end
local stored = 0
local now = redis.call('TIME')[1]
for i = 2, #ARGV, 8 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    stored = stored + 1
    if ARGV[i + 2] == 'done' then
      redis.call('HINCRBY', KEYS[2], 'done', 1)
      if ARGV[i + 6] ~= '' then
        redis.call('HINCRBY', KEYS[2], 'to_verify', 1)
        redis.call('ZADD', KEYS[4], 'NX', now, ARGV[i + 6])
      end
    else
      redis.call('HINCRBY', KEYS[2], 'failed', 1)
      if ARGV[i + 2] == 'retryable' then
        redis.call('SADD', KEYS[3], ARGV[i])
        if ARGV[i + 7] ~= '' then redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 7]) end
      end
    end
    redis.call('HINCRBY', KEYS[2], 'prompt_tokens', ARGV[i + 3])
    redis.call('HINCRBY', KEYS[2], 'completion_tokens', ARGV[i + 4])
    redis.call('HINCRBY', KEYS[2], 'cached_prompt_tokens', ARGV[i + 5])
  end
end
settle(KEYS[6], ARGV[1])
return stored
"""

# KEYS: verdicts, job, waiting, finalize set. ARGV: index, record (JSON), samples, passed samples, "JOB:INDEX",
# job id. First wins.
_VERDICT = _SETTLE + """
redis.call('ZREM', KEYS[3], ARGV[5])
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'verified', 1)
redis.call('HINCRBY', KEYS[2], 'verified_samples', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'passed_samples', ARGV[4])
settle(KEYS[4], ARGV[6])
return 1
"""

# KEYS: shard, attempts, results. ARGV: shard key, then the shard's item indices. The shard is deleted only when
# every item has a result; else the indices without one are returned and nothing changes. A shard already gone
# (another copy finished it; the job's results file took its results out of Redis) has nothing missing.
_DROP = """
local missing = {}
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return missing
end
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[3], ARGV[i]) == 0 then missing[#missing + 1] = ARGV[i] end
end
if #missing == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return missing
"""

# KEYS: waiting. ARGV: cutoff, now, limit. Members queued before the cutoff are stamped now and returned, so that
# of several executors sweeping at once only one queues each again.
_TAKE_STALE = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(members) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member)
end
return members
"""

# KEYS: results, job, failed, waiting, retry, finalize set. Removes every retryable failure; returns their
# indices, then the retry items stored for them (each once, under its first index).
_TAKE_FAILED = """
local indices = redis.call('SMEMBERS', KEYS[3])
local items = {}
for _, index in ipairs(indices) do
  redis.call('HDEL', KEYS[1], index)
  local item = redis.call('HGET', KEYS[5], index)
  if item then table.insert(items, item) end
end
if #indices > 0 then
  redis.call('DEL', KEYS[3])
  redis.call('HDEL', KEYS[5], unpack(indices))
  redis.call('HINCRBY', KEYS[2], 'failed', -#indices)
  redis.call('HDEL', KEYS[2], 'finished', 'cancelled', 'finalized')
  redis.call('SREM', KEYS[6], ARGV[1])
end
return {indices, items}
"""

# appendfsync everysec writes the AOF to disk once a second; a little more covers the write in flight.
AOF_FSYNC_SECONDS = 1.2

# Shards made and waiting for ``save_shards``' thread to store them (a shard is at most a few MB).
SHARDS_SAVED_AHEAD = 2

# A job's submit options as ``status`` shows them. Its record stores only those that differ from these, so that a
# finished job's record is a small hash of short values, which Redis keeps in its compact listpack encoding
# (while every value is at most ``hash-max-listpack-value``, 64 bytes by default): 0.76 KB of key data a job
# against 1.83 KB as a hash table (``benchmarks/redis_memory.py``).
JOB_OPTION_DEFAULTS: dict[str, Any] = {"defaults": {}, "echo_prompt": False, "skip_invalid": False, "invalid_lines": 0,
                                       "group_prefixes": True, "dedup": True}

# The job's keys besides its record and its shards.
JOB_STATES = ("queued", "running", "completed", "completed_with_errors", "cancelled")


@dataclass(frozen=True)
class ResultEntry:
    index: int
    line: str
    outcome: str  # "done" | "failed" | "retryable"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    verify: bool = False  # a "done" result that the executor pool then runs against the item's tests
    retry_item: str = ""  # a retryable failure's shard item (JSON), stored once per shard item


@dataclass(frozen=True)
class JobStatus:
    id: str
    model: str
    queue: str
    input: str
    sha256: str
    created: float
    finished: float | None
    total: int
    done: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    shards: int
    cancelled: bool
    deduplicated: int = 0  # items that shared an identical deterministic request's run
    options: dict[str, Any] = field(default_factory=dict)
    to_verify: int = 0  # results stored so far that need a verdict
    verified: int = 0  # of those, how many have their verdicts
    verified_samples: int = 0  # samples (outputs) run against their tests
    passed_samples: int = 0  # of those, how many passed
    output_url: str | None = None  # the folder the job's results file is written to when it settles
    results_file: str | None = None  # where it was last written (kept while a retry runs)
    finalized: float | None = None  # when it was written, for the job's present results; None: not (yet)
    finalize_error: str | None = None  # why the last attempt to write it failed

    @property
    def results_url(self) -> str | None:
        """The results file that holds every item's present result, or None while there is none."""
        return self.results_file if self.finalized is not None else None

    @property
    def pending(self) -> int:
        return self.total - self.done - self.failed

    @property
    def verifying(self) -> int:
        """Results waiting for their verdicts."""
        return self.to_verify - self.verified

    @property
    def settled(self) -> bool:
        """Every item has a result and every verdict is in (or the job is cancelled): the job's end."""
        return self.cancelled or (self.pending == 0 and self.verifying == 0)

    @property
    def state(self) -> str:
        if self.cancelled:
            return "cancelled"
        if self.pending == 0 and self.verifying == 0:
            return "completed_with_errors" if self.failed else "completed"
        return "running" if self.done or self.failed else "queued"

    def as_dict(self) -> dict[str, Any]:
        values = {key: value for key, value in vars(self).items() if key != "cancelled"}
        return {**values, "pending": self.pending, "verifying": self.verifying, "state": self.state,
                "results_url": self.results_url}


def _int(value: bytes | None) -> int:
    return int(value) if value else 0


class JobStore:
    def __init__(self, client: redis.Redis, prefix: str = "dscbatch") -> None:
        self.client = client
        self.prefix = prefix
        self.keys = Keys(prefix)
        self._record = client.register_script(_RECORD)
        self._take_failed = client.register_script(_TAKE_FAILED)
        self._verdict = client.register_script(_VERDICT)
        self._take_stale = client.register_script(_TAKE_STALE)
        self._drop = client.register_script(_DROP)

    @classmethod
    def connect(cls, settings: Settings) -> JobStore:
        """A store on ``settings.redis_url``, checked with a PING; failures are one readable line."""
        # The first PING fails fast: a wrong URL, password or certificate is reported at once.
        probe = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=10)
        try:
            probe.ping()
        except redis.AuthenticationError:
            raise BrokerError(f"Redis at {settings.redacted_redis_url} refused the credentials") from None
        except redis.RedisError as error:
            reason = str(error).replace(settings.redis_url, settings.redacted_redis_url)
            raise BrokerError(f"cannot reach Redis at {settings.redacted_redis_url}: {reason}") from None
        finally:
            probe.close()
        # Once connected, ride out a Redis restart or a dropped connection (about five minutes of retries)
        # rather than fail a shard half-way: every write here is idempotent, so a retried command is safe.
        retry = Retry(ExponentialBackoff(cap=10, base=0.5), retries=40)
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=10, health_check_interval=30,
                                      retry=retry, retry_on_error=[redis.ConnectionError, redis.TimeoutError])
        return cls(client, settings.key_prefix)

    def job_key(self, job_id: str) -> str:
        return self.keys.job(job_id)

    def shard_key(self, job_id: str, number: int) -> str:
        return self.keys.shard(job_id, number)

    def _keys(self, job_id: str) -> list[str]:
        part = functools.partial(self.keys.job_part, job_id)
        return [part("results"), self.job_key(job_id), part("failed"), self.waiting_key, part("retry"),
                self.keys.finalize]

    @property
    def waiting_key(self) -> str:
        return self.keys.verify_waiting

    # Shards

    def save_shards(self, job_id: str, payloads: Iterable[dict[str, Any]], first: int = 0) -> list[str]:
        """Store shard payloads numbered from ``first``; returns their keys in that order. A thread encodes and
        stores each while the caller makes the next (compressing and sending run without the GIL); at most
        ``SHARDS_SAVED_AHEAD`` wait for it."""
        keys: list[str] = []
        saving: deque[Future[None]] = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dscbatch-shards") as saver:
            for number, payload in enumerate(payloads, first):
                keys.append(self.shard_key(job_id, number))
                saving.append(saver.submit(self._save_shard, keys[-1], payload))
                if len(saving) > SHARDS_SAVED_AHEAD:
                    saving.popleft().result()
            for saved in saving:
                saved.result()
        return keys

    def _save_shard(self, key: str, payload: dict[str, Any]) -> None:
        self.client.set(key, shard_codec.encode(payload))

    def load_shard(self, key: str) -> dict[str, Any] | None:
        data = self.client.get(key)
        return None if data is None else shard_codec.decode(cast(bytes, data))

    def drop_shard(self, job_id: str, shard_key: str, indices: Sequence[int]) -> list[int]:
        """Delete a shard if every one of its items (``indices``) has a result, checked in the same step: Redis
        keeps the payload of unfinished work only. Returns the indices without a result (nothing is dropped
        then): results the worker stored and Redis lost (a crash that cost the tail of its append-only file)."""
        keys = [shard_key, self.keys.job_part(job_id, "attempts"), self.keys.job_part(job_id, "results")]
        return [int(index) for index in cast(list[bytes], self._drop(keys=keys, args=[shard_key, *indices]))]

    def shard_header(self, job_id: str) -> dict[str, Any]:
        """What every shard of the job repeats besides its items (model, stop ids, creation time)."""
        model, stop, created, legacy = cast(list[bytes | None], self.client.hmget(self.job_key(job_id),
                                                                   ["model", "stop", "created", "shard_header"]))
        if model is None or created is None:
            raise JobNotFoundError(f"no job {job_id!r} in Redis (see `dscbatch list`)")
        # Records written by earlier versions keep the whole header as one JSON field.
        stop_ids = json.loads(stop) if stop is not None else json.loads(legacy or b"{}").get("stop", [])
        return {"job": job_id, "model": model.decode(), "stop": stop_ids, "created": int(float(created))}

    # Jobs

    def create_job(self, job_id: str, fields: dict[str, Any]) -> None:
        """Publish the job record; before this the job is invisible to ``list`` and ``status``."""
        options = {name: value for name, value in fields.get("options", {}).items()
                   if JOB_OPTION_DEFAULTS.get(name) != value}
        values: dict[FieldT, EncodableT] = {
            key: json.dumps(value, separators=(",", ":")) if isinstance(value, dict | list) else value
            for key, value in {**fields, "options": options or None}.items() if value is not None}
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.job_key(job_id), mapping=values)
        pipe.zadd(self.keys.jobs, {job_id: float(fields["created"])})
        pipe.execute()
        self.record(job_id, [])  # marks the job finished when submission already settled every item

    def delete_job(self, job_id: str, shards: int | None = None) -> None:
        """Remove every key of the job from Redis (a refused submission leaves nothing behind); ``shards``: how
        many shard numbers it used, when its record does not say (it has none yet)."""
        job = self.job_key(job_id)
        if shards is None:
            shards = _int(cast(bytes | None, self.client.hget(job, "shards")))
        keys = [job, *self.keys.job_parts(job_id)]
        keys += [self.shard_key(job_id, number) for number in range(shards)]
        pipe = self.client.pipeline(transaction=True)
        for start in range(0, len(keys), 1000):
            pipe.delete(*keys[start:start + 1000])
        pipe.zrem(self.keys.jobs, job_id)
        pipe.srem(self.keys.finalize, job_id)
        pipe.hdel(self.keys.finalizing, job_id)
        pipe.execute()

    def confirm_durable(self) -> None:
        """Return once Redis has written what this client wrote to its append-only file, where it keeps one.

        WAITAOF (Redis 7.2+) confirms the fsync; older servers get one ``appendfsync everysec`` interval.
        """
        persistence = self.client.info("persistence")
        if not persistence.get("aof_enabled"):
            return
        try:
            self.client.execute_command("WAITAOF", 1, 0, 5000)  # type: ignore[no-untyped-call]
        except redis.ResponseError:
            time.sleep(AOF_FSYNC_SECONDS)

    def add_shards(self, job_id: str, count: int) -> int:
        """Reserve ``count`` new shard numbers; returns the first."""
        return int(self.client.hincrby(self.job_key(job_id), "shards", count)) - count

    def status(self, job_id: str) -> JobStatus:
        return self._status(job_id, cast(dict[bytes, bytes], self.client.hgetall(self.job_key(job_id))))

    def statuses(self, job_ids: Sequence[str]) -> list[JobStatus]:
        """The status of each job in one round trip, leaving out jobs that no longer exist."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.job_key(job_id))
        found = zip(job_ids, cast(list[dict[bytes, bytes]], pipe.execute()), strict=True)
        return [self._status(job_id, raw) for job_id, raw in found if b"total" in raw]

    @staticmethod
    def _status(job_id: str, raw: dict[bytes, bytes]) -> JobStatus:
        if not raw or b"total" not in raw:
            raise JobNotFoundError(f"no job {job_id!r} in Redis (see `dscbatch list`)")
        values = {key.decode(): value.decode() for key, value in raw.items()}
        return JobStatus(
            id=job_id, model=values["model"], queue=values["queue"], input=values.get("input", ""),
            sha256=values.get("sha256", ""), created=float(values["created"]),
            finished=float(values["finished"]) if "finished" in values else None,
            total=int(values["total"]),
            **{name: _int(raw.get(name.encode())) for name in
               ("done", "failed", "prompt_tokens", "completion_tokens", "cached_prompt_tokens", "shards",
                "deduplicated", "to_verify", "verified", "verified_samples", "passed_samples")},
            cancelled=values.get("cancelled") == "1",
            options={**JOB_OPTION_DEFAULTS, **json.loads(values.get("options", "{}"))},
            output_url=values.get("output_url"), results_file=values.get("results_file"),
            finalized=float(values["finalized"]) if "finalized" in values else None,
            finalize_error=values.get("finalize_error"),
        )

    def job_ids(self) -> list[str]:
        return [job_id.decode() for job_id in cast(list[bytes], self.client.zrange(self.keys.jobs, 0, -1))]

    def cancel(self, job_id: str) -> JobStatus:
        self.status(job_id)
        self.client.hset(self.job_key(job_id), mapping={"cancelled": "1", "finished": time.time()})
        return self.status(job_id)

    def settlement(self, job_id: str) -> int | None:
        """The job's settlement generation while every item has its result (``_SETTLE`` decides, ``retry``
        unsettles), else None."""
        settlements, finished = self.client.hmget(self.job_key(job_id), ["settlements", "finished"])
        return int(settlements) if settlements is not None and finished is not None else None

    def is_cancelled(self, job_id: str) -> bool:
        return self.client.hget(self.job_key(job_id), "cancelled") == b"1"

    # Workers

    def beat(self, hostname: str, info: dict[str, Any], ttl: int) -> None:
        """Say that a worker is alive for the next ``ttl`` seconds."""
        self.client.set(self.keys.worker(hostname), json.dumps(info), ex=ttl)

    def workers(self) -> dict[str, dict[str, Any]]:
        """Workers whose heartbeat has not expired, by hostname."""
        found: dict[str, dict[str, Any]] = {}
        for key in cast(list[bytes], list(self.client.scan_iter(self.keys.workers_pattern, count=1000))):
            value = self.client.get(key)
            if value is not None:
                found[key.decode().rsplit(":", 1)[-1]] = json.loads(cast(bytes, value))
        return found

    def beat_executor(self, hostname: str, info: dict[str, Any], ttl: int) -> None:
        """Say that an executor is alive for the next ``ttl`` seconds."""
        self.client.set(self.keys.executor(hostname), json.dumps(info), ex=ttl)

    def executors(self) -> list[str]:
        """Hostnames of executors whose heartbeat has not expired."""
        return [key.decode().split(":", 2)[-1] for key in
                cast(list[bytes], list(self.client.scan_iter(self.keys.executors_pattern, count=1000)))]

    def claim(self, worker: str, job_id: str, shard_key: str) -> int:
        """Note that ``worker`` runs the shard, so that it can be requeued if the worker dies; returns how
        many times the shard has been started, this time included."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.claims, json.dumps([worker, shard_key]), job_id)
        pipe.hincrby(self.keys.job_part(job_id, "attempts"), shard_key, 1)
        return int(pipe.execute()[1])

    def item_attempt(self, job_id: str, key: str) -> int:
        """Count one more start of an item (or of one prompt of an item of several: its engine request key) run
        on its own; returns the count, this one included."""
        return int(self.client.hincrby(self.keys.job_part(job_id, "item_attempts"), key, 1))

    def release(self, worker: str, shard_key: str) -> bool:
        """Drop ``worker``'s claim of the shard; True for the one caller that removed it (the owner, or one
        reaper)."""
        return bool(self.client.hdel(self.keys.claims, json.dumps([worker, shard_key])))

    def running_shards(self, job_id: str) -> int:
        """How many of the job's shards workers have claimed and not released (they are running)."""
        jobs = cast(list[bytes], self.client.hvals(self.keys.claims))
        return sum(1 for job in jobs if job.decode() == job_id)

    def _claims(self) -> list[tuple[str, str, str, bool]]:
        """(worker, job id, shard key, whether the worker's heartbeat is alive) of every claim."""
        claims = [(*json.loads(field), job.decode()) for field, job in
                  cast(dict[bytes, bytes], self.client.hgetall(self.keys.claims)).items()]
        pipe = self.client.pipeline(transaction=False)
        for worker, _, _ in claims:
            pipe.exists(self.keys.worker(worker))
        return [(worker, job_id, shard_key, bool(alive)) for (worker, shard_key, job_id), alive in
                zip(claims, pipe.execute(), strict=True)]

    def claimed_shards(self) -> set[str]:
        """The shard keys of every claim, the worker alive or not (a dead one's is requeued by heartbeats)."""
        return {json.loads(field)[1] for field in cast(list[bytes], self.client.hkeys(self.keys.claims))}

    def claims_of(self, worker: str) -> list[tuple[str, str]]:
        """(job id, shard key) of the claims held in ``worker``'s name."""
        return [(job_id, shard_key) for holder, job_id, shard_key, _ in self._claims() if holder == worker]

    def orphaned_claims(self) -> list[tuple[str, str, str]]:
        """(worker, job id, shard key) of claims whose worker's heartbeat has expired."""
        return [(worker, job_id, shard_key) for worker, job_id, shard_key, alive in self._claims() if not alive]

    def live_claims(self) -> set[str]:
        """The shard keys live workers claim."""
        return {shard_key for _, _, shard_key, alive in self._claims() if alive}

    # Results

    def record(self, job_id: str, entries: Sequence[ResultEntry], shard_key: str | None = None) -> int:
        """Store each entry unless its item already has a result (first wins); returns how many were new.
        With ``shard_key``, nothing is stored once that shard's payload is gone (another copy finished it)."""
        args: list[str | int] = [job_id]
        for entry in entries:
            args += [entry.index, entry.line, entry.outcome, entry.prompt_tokens, entry.completion_tokens,
                     entry.cached_prompt_tokens, f"{job_id}:{entry.index}" if entry.verify else "", entry.retry_item]
        keys = self._keys(job_id) + ([shard_key] if shard_key is not None else [])
        return int(self._record(keys=keys, args=args))

    def settled(self, job_id: str, indices: Sequence[int]) -> set[int]:
        """Which of ``indices`` already have a result."""
        if not indices:
            return set()
        present = self.client.hmget(self.keys.job_part(job_id, "results"), list(indices))
        return {index for index, value in zip(indices, present, strict=True) if value is not None}

    def take_failed(self, job_id: str) -> tuple[list[int], list[dict[str, Any]]]:
        """Forget every retryable failure of the job so that it can run again; returns their indices and the
        shard items that run them again."""
        indices, items = self._take_failed(keys=self._keys(job_id), args=[job_id])
        return sorted(int(index) for index in indices), [json.loads(item) for item in items]

    # Verification

    def save_verify_specs(self, job_id: str, specs: dict[int, str]) -> None:
        """Keep each item's ``verify`` spec (JSON) for the executor pool."""
        if specs:
            self.client.hset(self.keys.job_part(job_id, "verify"), mapping=dict(specs.items()))

    def verification_input(self, job_id: str, index: int) -> tuple[str | None, str | None]:
        """An item's ``verify`` spec and its stored result line (either None where it is missing)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.keys.job_part(job_id, "verify"), str(index))
        pipe.hget(self.keys.job_part(job_id, "results"), str(index))
        spec, line = cast(list[bytes | None], pipe.execute())
        return (None if spec is None else spec.decode()), (None if line is None else line.decode())

    def record_verdict(self, job_id: str, index: int, record: str, samples: int, passed: int) -> bool:
        """Store the item's verification record unless it has one (first wins); True if this one was new."""
        keys = [self.keys.job_part(job_id, "verdicts"), self.job_key(job_id), self.waiting_key, self.keys.finalize]
        return bool(self._verdict(keys=keys,
                                  args=[index, record, samples, passed, f"{job_id}:{index}", job_id]))

    def has_verdict(self, job_id: str, index: int) -> bool:
        return bool(self.client.hexists(self.keys.job_part(job_id, "verdicts"), str(index)))

    def forget_waiting(self, job_id: str, index: int) -> None:
        """Stop sweeping for an item that will never get a verdict (its job was deleted or cancelled)."""
        self.client.zrem(self.waiting_key, f"{job_id}:{index}")

    def take_stale_verifications(self, older_than: float, limit: int = 1000) -> list[tuple[str, int]]:
        """(job id, index) of results queued for verification more than ``older_than`` seconds ago without a
        verdict since, each returned to one caller only (it queues them again)."""
        now = time.time()
        members = cast(list[bytes], self._take_stale(keys=[self.waiting_key], args=[now - older_than, now, limit]))
        found = []
        for member in members:
            job_id, _, index = member.decode().rpartition(":")
            found.append((job_id, int(index)))
        return found

    def iter_verdicts(self, job_id: str, total: int, chunk: int = 1000) -> Iterator[str | None]:
        """Each item's verification record in index order (None where it has none)."""
        key = self.keys.job_part(job_id, "verdicts")
        for start in range(0, total, chunk):
            values = cast(list[bytes | None], self.client.hmget(key, list(range(start, min(start + chunk, total)))))
            yield from (None if value is None else value.decode() for value in values)

    def iter_results(self, job_id: str, total: int, chunk: int = 1000) -> Iterator[tuple[int, str | None]]:
        key = self.keys.job_part(job_id, "results")
        for start in range(0, total, chunk):
            indices = list(range(start, min(start + chunk, total)))
            values = cast(list[bytes | None], self.client.hmget(key, indices))
            for index, value in zip(indices, values, strict=True):
                yield index, None if value is None else value.decode()

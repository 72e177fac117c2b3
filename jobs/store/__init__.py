"""Job state: coordination in Redis, data in the job's work folder (``jobs.workfolder``).

Every Redis key and its meaning are listed in ``core/keys.py`` (:class:`~dscbatch.core.keys.Keys`); nothing builds
one elsewhere. The Lua scripts are the ``.lua`` files beside this module (``scripts.py``). This package is the only
part of dscbatch that reads or writes Redis (an import-linter contract forbids ``redis`` elsewhere, but for
``workers.embedded``, which starts a redis-server): :class:`JobStore` holds the jobs' methods, and its mixins one
concept each: ``finalizing.py`` (the results file's claim and commit), ``deliveries.py`` (kombu's queues and
unacknowledged deliveries), ``suspects.py`` (the stranded-shard repair), ``records.py`` (the Batch API's records,
API keys and active batches); ``base.py`` has the locks, ``ping`` and :data:`StoreUnavailable`, the error that
loops outside catch. ``JobStore.client`` is for tests and benchmarks.

Redis holds, per job, its record and counters, a small marker per shard that still has work (a bitmap of the
shard's positions that have a result) and the names of the job's committed result parts: its memory grows with
the shards in flight and the parts, never with the items' data. Shard payloads, results and the items'
``verify`` specs are objects in the work folder.

**Verification** keeps in Redis only what is in flight: the results awaiting a verdict (``verify_at`` and the
waiting set) and the verification records stored since a worker last moved them out. An executor stores an
item's record first-wins (``verdict.lua``: a bit per index says which have one) in the job's verdicts hash; a
worker's housekeeping thread moves them (``flush_due_verdicts``) to a verdict part in the work folder, in the
result parts' format, and commits it in one step (``flush_verdicts.lua``) that lists it and deletes exactly the
records it holds. ``iter_verdicts`` merges the verdict parts with what the hash still holds.

**Results are committed parts** (``jobs.parts``), as Spark's and Hadoop's output committers commit task output:
a worker writes a part (some results of one shard) to the work folder, then commits it in one Lua step
(``commit_part.lua``) that refuses it whole if any of its positions already has a result (another copy of the
shard committed first) or if the shard is gone. A refused part is rewritten without the taken positions, so
every item has exactly one committed result, whatever redeliveries or speculative copies run. Counters move only
in that step, so ``done + failed`` always equals the number of committed results.

A job *settles* (gets ``finished``) when every item has a result and every result that needs verification
has its verdicts: ``done + failed >= total`` and ``verified >= to_verify`` (``settle.lua``, included by both
scripts that move counters; :meth:`JobStatus.settled` is the same test in Python). Each settlement also bumps
the job's ``settlements`` generation (``retry`` unsettles a job) and, for a job with an output folder, adds it
to ``P:finalize``.

A shard's marker lives only while some of its items have no result: the worker that finishes it deletes it
(``drop_shard``, which checks in the same step that every position has its result, so results that Redis lost in
a crash run again rather than go missing for good), and no part is committed for a shard whose marker is gone.
Payloads and parts leave the work folder with the job's results file (``jobs.finalize``) or the job.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.typing import EncodableT, FieldT

from dscbatch.core.errors import BrokerError, JobNotFoundError, StorageError
from dscbatch.core.keys import Keys
from dscbatch.core.settings import Settings
from dscbatch.jobs import parts, shard_codec
from dscbatch.jobs.store import scripts
from dscbatch.jobs.store import specs as spec_files
from dscbatch.jobs.store.base import StoreUnavailable as StoreUnavailable  # re-exported for loops outside
from dscbatch.jobs.store.deliveries import Deliveries
from dscbatch.jobs.store.events import JobEvents
from dscbatch.jobs.store.finalizing import Finalizing
from dscbatch.jobs.store.ranges import Ranges
from dscbatch.jobs.store.records import Records
from dscbatch.jobs.store.suspects import Suspects
from dscbatch.jobs.workfolder import WorkFolder

# appendfsync everysec writes the AOF to disk once a second; a little more covers the write in flight.
AOF_FSYNC_SECONDS = 1.2

# Shards made and waiting for ``save_shards``' thread to store them (a shard is at most a few MB).
SHARDS_SAVED_AHEAD = 2

# Verification records wait in Redis until a worker moves them to a verdict part in the work folder
# (``flush_due_verdicts``, from its housekeeping thread): once the oldest waited this long, or once a job has this
# many; a part holds at most VERDICT_PART_ITEMS. One worker of the deployment flushes per round.
VERDICT_FLUSH_SECONDS = 30
VERDICT_FLUSH_ITEMS = 1024
VERDICT_PART_ITEMS = 4096
VERDICT_FLUSH_ROUND_SECONDS = 10
# Spec files a store remembers writing, to add to one rather than replace it when a caller saves its specs in
# pieces (``save_verify_specs``).
SPEC_FILES_REMEMBERED = 256
# The name under which ``iter_verdicts`` merges the records still in Redis with the verdict parts.
IN_REDIS = "redis:verdicts"

# A job's submit options as ``status`` shows them. Its record stores only those that differ from these, so that a
# finished job's record is a small hash of short values, which Redis keeps in its compact listpack encoding
# (while every value is at most ``hash-max-listpack-value``, 64 bytes by default): 0.76 KB of key data a job
# against 1.83 KB as a hash table (``benchmarks/redis_memory.py``).
JOB_OPTION_DEFAULTS: dict[str, Any] = {"defaults": {}, "echo_prompt": False, "skip_invalid": False, "invalid_lines": 0,
                                       "group_prefixes": True, "dedup": True, "output_parts": None}

# The job's keys besides its record and its shards.
JOB_STATES = ("submitting", "queued", "running", "completed", "completed_with_errors", "cancelled")


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
class PartEntry:
    """A committed result part as the job's parts list holds it: its name and the tokens its commit counted."""

    entry: str  # the list's element, as stored
    name: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0

    @classmethod
    def parse(cls, raw: bytes) -> PartEntry:
        name, *tokens = raw.decode().split(" ")
        return cls(raw.decode(), name, *(int(count) for count in tokens))

    @property
    def shard(self) -> int | None:
        """The number of the shard whose results it holds; None for submission's error records and
        replacements."""
        first = self.name.partition("-")[0]
        return int(first) if first.isdigit() else None


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
    # While ``submit`` still reads the file: ``total`` is the lines read so far and the job cannot settle.
    submitting: bool = False

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
        return self.cancelled or (not self.submitting and self.pending == 0 and self.verifying == 0)

    @property
    def state(self) -> str:
        if self.cancelled:
            return "cancelled"
        if self.submitting:
            return "submitting"
        if self.pending == 0 and self.verifying == 0:
            return "completed_with_errors" if self.failed else "completed"
        return "running" if self.done or self.failed else "queued"

    def as_dict(self) -> dict[str, Any]:
        values = {key: value for key, value in vars(self).items() if key != "cancelled"}
        return {**values, "pending": self.pending, "verifying": self.verifying, "state": self.state,
                "results_url": self.results_url}


def _encoded(fields: dict[str, Any]) -> dict[FieldT, EncodableT]:
    """A job record's fields as Redis stores them: options that differ from their defaults, dicts and lists
    as JSON, None left out."""
    if "options" in fields:
        options = {name: value for name, value in fields["options"].items() if JOB_OPTION_DEFAULTS.get(name) != value}
        fields = {**fields, "options": options or None}
    return {key: json.dumps(value, separators=(",", ":")) if isinstance(value, dict | list) else value
            for key, value in fields.items() if value is not None}


def _int(value: bytes | None) -> int:
    return int(value) if value else 0


class JobStore(Finalizing, Deliveries, Suspects, Records, Ranges):
    def __init__(self, client: redis.Redis, prefix: str = "dscbatch", work: WorkFolder | str | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.work = work if isinstance(work, WorkFolder) else WorkFolder(work or Settings().work_url)
        self._commit_part = scripts.register(client, "commit_part")
        self._take_failed = scripts.register(client, "take_failed")
        self._verdict = scripts.register(client, "verdict")
        self._take_stale = scripts.register(client, "take_stale")
        self._drop = scripts.register(client, "drop_shard")
        self._replace_lost = scripts.register(client, "replace_lost_parts")
        self._flush_verdicts = scripts.register(client, "flush_verdicts")
        self._commit_range = scripts.register(client, "commit_range")
        self._spec_cache = spec_files.SpecCache(self.work.read)
        self._spec_bases = spec_files.BasesCache(self.range_bases)
        # The last spec files written here (save_verify_specs): a few suffice, a job's chunks come in order.
        self._specs_written: OrderedDict[str, None] = OrderedDict()

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
        return cls(client, settings.key_prefix, settings.work_url)

    def job_key(self, job_id: str) -> str:
        return self.keys.job(job_id)

    def job_queue(self, job_id: str) -> str | None:
        """The queue of the job's shards (its model's), or None once the job is gone."""
        queue = cast(bytes | None, self.client.hget(self.job_key(job_id), "queue"))
        return None if queue is None else queue.decode()

    def shard_key(self, job_id: str, number: int) -> str:
        return self.keys.shard(job_id, number)

    def _commit_keys(self, job_id: str) -> list[str]:
        part = functools.partial(self.keys.job_part, job_id)
        return [part("parts"), self.job_key(job_id), part("failed"), self.waiting_key, part("retry"),
                self.keys.finalize, part("voided"), part("verify_at")]

    @property
    def waiting_key(self) -> str:
        return self.keys.verify_waiting

    # Shards

    def save_shards(self, job_id: str, payloads: Iterable[dict[str, Any]], first: int = 0) -> list[str]:
        """Store shard payloads numbered from ``first`` (each in the work folder, then its marker in Redis);
        returns their keys in that order. A thread encodes and stores each while the caller makes the next
        (compressing and sending run without the GIL); at most ``SHARDS_SAVED_AHEAD`` wait for it."""
        keys: list[str] = []
        saving: deque[Future[None]] = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dscbatch-shards") as saver:
            for number, payload in enumerate(payloads, first):
                keys.append(self.shard_key(job_id, number))
                saving.append(saver.submit(self.save_shard, keys[-1], payload))
                if len(saving) > SHARDS_SAVED_AHEAD:
                    saving.popleft().result()
            for saved in saving:
                saved.result()
        return keys

    def save_shard(self, key: str, payload: dict[str, Any]) -> None:
        """Store one shard's payload in the work folder, then its marker in Redis."""
        self.work.write(self.work.shard(*self.keys.parse_shard(key)), shard_codec.encode(payload))
        self.client.set(key, b"\x00")  # the marker: no position has a result yet

    def load_shard(self, key: str) -> dict[str, Any] | None:
        """A shard's payload while it has work left (its marker is in Redis), else None."""
        if not self.client.exists(key):
            return None
        try:
            data = self.work.read(self.work.shard(*self.keys.parse_shard(key)))
        except StorageError:
            if not self.client.exists(key):  # finished and deleted meanwhile by another copy
                return None
            raise
        return shard_codec.decode(data)

    def finished_shard(self, job_id: str, number: int) -> dict[str, Any]:
        """A shard's payload from the work folder whatever its marker says (it stays there until the job's
        results file is written); :class:`MissingDataError` once it is gone."""
        return shard_codec.decode(self.work.read(self.work.shard(job_id, number)))

    def drop_shard(self, job_id: str, shard_key: str, indices: Sequence[int]) -> list[int]:
        """Delete a shard's marker if every one of its items (``indices``, in shard order) has a result, checked
        in the same step: Redis keeps unfinished work only. Returns the indices without a result (nothing is
        dropped then): results the worker committed and Redis lost (a crash that cost the tail of its
        append-only file). The payload stays in the work folder until the job's results file is written or
        the job is deleted: a Redis that restarts from an older state brings the marker back, and the shard
        must still be there to run again."""
        keys = [shard_key, self.keys.job_part(job_id, "attempts")]
        missing = cast(list[int], self._drop(keys=keys, args=[shard_key, len(indices)]))
        return [indices[int(position)] for position in missing]

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
        """Publish the job record; before this the job is invisible to ``list`` and ``status``. A record
        without ``total`` is a job still being submitted: it cannot settle until :meth:`submitted` gives it one."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.job_key(job_id), mapping=_encoded(fields))
        if "total" not in fields:
            pipe.hset(self.job_key(job_id), mapping={"submitting": 1, "read": 0, "shards": 0})
        pipe.zadd(self.keys.jobs, {job_id: float(fields["created"])})
        pipe.execute()
        if "total" in fields:
            self.record(job_id, [])  # marks the job finished when submission already settled every item

    def submission_step(self, job_id: str, lines_read: int) -> bool:
        """Publish how many lines a running submission has read; returns whether it must stop (the job was
        cancelled or deleted meanwhile)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hget(self.job_key(job_id), "cancelled")
        pipe.hexists(self.job_key(job_id), "created")
        cancelled, exists = pipe.execute()
        if cancelled == b"1" or not exists:
            return True
        self.client.hset(self.job_key(job_id), "read", lines_read)
        return False

    def submitted(self, job_id: str, fields: dict[str, Any]) -> None:
        """End a submission: the record gets its ``total`` (and what else was learned reading the file), so it
        can settle now; it settles at once if every item already has its result."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.job_key(job_id), mapping=_encoded(fields))
        pipe.hdel(self.job_key(job_id), "submitting", "read")
        pipe.execute()
        self.record(job_id, [])

    def delete_job(self, job_id: str, shards: int | None = None) -> None:
        """Remove every key of the job from Redis and its work folder (a refused submission leaves nothing
        behind); ``shards``: how many shard numbers it used, when its record does not say (it has none yet)."""
        job = self.job_key(job_id)
        keys = [job, *self.keys.job_parts(job_id)]
        if shards is None and not self.client.hexists(job, "shards"):  # a submission that failed half-way
            keys += [key.decode() for key in
                     cast(list[bytes], list(self.client.scan_iter(self.keys.shards_pattern(job_id), count=1000)))]
        else:
            shards = shards if shards is not None else _int(cast(bytes | None, self.client.hget(job, "shards")))
            keys += [self.shard_key(job_id, number) for number in range(shards)]
        pipe = self.client.pipeline(transaction=True)
        for start in range(0, len(keys), 1000):
            pipe.delete(*keys[start:start + 1000])
        pipe.zrem(self.keys.jobs, job_id)
        pipe.srem(self.keys.finalize, job_id)
        pipe.hdel(self.keys.finalizing, job_id)
        pipe.execute()
        self.work.delete_job(job_id)

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
        return [self._status(job_id, raw) for job_id, raw in found if b"created" in raw]

    @staticmethod
    def _status(job_id: str, raw: dict[bytes, bytes]) -> JobStatus:
        if not raw or b"created" not in raw:
            raise JobNotFoundError(f"no job {job_id!r} in Redis (see `dscbatch list`)")
        values = {key.decode(): value.decode() for key, value in raw.items()}
        return JobStatus(
            id=job_id, model=values["model"], queue=values["queue"], input=values.get("input", ""),
            sha256=values.get("sha256", ""), created=float(values["created"]),
            finished=float(values["finished"]) if "finished" in values else None,
            total=int(values["total"] if "total" in values else values.get("read", 0)),
            submitting=values.get("submitting") == "1",
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

    def jobs_created_before(self, cutoff: float) -> list[str]:
        """The ids of the jobs created at or before ``cutoff`` (a time)."""
        return [job_id.decode() for job_id in
                cast(list[bytes], self.client.zrangebyscore(self.keys.jobs, "-inf", cutoff))]

    def cancel(self, job_id: str) -> JobStatus:
        self.status(job_id)
        self.client.hset(self.job_key(job_id), mapping={"cancelled": "1", "finished": time.time()})
        self.announce(job_id, "cancelled")
        return self.status(job_id)

    def cancel_if_present(self, job_id: str) -> None:
        """Mark the job cancelled if its record exists (a deleted job is not brought back)."""
        self._set_if_present(job_id, "cancelled", 1)
        self.announce(job_id, "cancelled")

    def events(self, job_id: str) -> JobEvents:
        """Subscribe to the job's events (settled, finalized, cancelled, finalize_error): a waiting command's
        wake-up (``cli/progress.py``)."""
        return JobEvents(self.client, self.keys.job_events(job_id))

    def count_shards(self, job_id: str, shards: int) -> None:
        """Record how many shard numbers a running submission has used, so a delete finds every shard."""
        self._set_if_present(job_id, "shards", shards)

    def _set_if_present(self, job_id: str, name: str, value: int) -> None:
        self.client.eval("if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) "
                         "end", 1, self.job_key(job_id), name, value)

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

    def workers(self, render_only: bool = False) -> dict[str, dict[str, Any]]:
        """Workers with an engine whose heartbeat has not expired, by hostname; with ``render_only``, the
        render-only workers (``dscbatch worker --render-only``) instead."""
        found: dict[str, dict[str, Any]] = {}
        for key in cast(list[bytes], list(self.client.scan_iter(self.keys.workers_pattern, count=1000))):
            value = self.client.get(key)
            if value is not None and bool((info := json.loads(cast(bytes, value))).get("render_only")) == render_only:
                found[key.decode().rsplit(":", 1)[-1]] = info
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

    def _shard_claims(self) -> list[tuple[str, str, str, bool]]:
        """(worker, job id, shard key, whether the worker's heartbeat is alive) of every shard claim."""
        return self._claims_in(self.keys.claims)

    def claimed_shards(self) -> set[str]:
        """The shard keys of every claim, the worker alive or not (a dead one's is requeued by heartbeats)."""
        return {json.loads(field)[1] for field in cast(list[bytes], self.client.hkeys(self.keys.claims))}

    def claims_of(self, worker: str) -> list[tuple[str, str]]:
        """(job id, shard key) of the claims held in ``worker``'s name."""
        return [(job_id, shard_key) for holder, job_id, shard_key, _ in self._shard_claims() if holder == worker]

    def orphaned_claims(self) -> list[tuple[str, str, str]]:
        """(worker, job id, shard key) of claims whose worker's heartbeat has expired."""
        return [(worker, job_id, shard_key) for worker, job_id, shard_key, alive in self._shard_claims() if not alive]

    def live_claims(self) -> set[str]:
        """The shard keys live workers claim."""
        return {shard_key for _, _, shard_key, alive in self._shard_claims() if alive}

    # Results

    def record(self, job_id: str, entries: Sequence[ResultEntry], shard_key: str | None = None,
               positions: Mapping[int, int] | None = None) -> int:
        """Commit the entries as one part (``jobs.parts``); returns how many results were new. With
        ``shard_key`` (and each entry's position in that shard, ``positions``), entries whose position already
        has a result are left out (another copy of the shard committed theirs), and nothing is stored once the
        shard is gone (another copy finished it). ``shard_key`` may be a job's ``range_errors_key`` instead (each
        entry's position its index). Without entries, only checks whether the job has settled."""
        pending = list(entries)
        while True:
            # A shard's part starts with its number; submission's error records (no marker, or the marker of a job
            # rendered on the cluster: ``range_errors_key``) with "submit".
            of_shard = shard_key is not None and shard_key != self.range_errors_key(job_id)
            name = f"{self.keys.parse_shard(shard_key)[1] if of_shard and shard_key else 'submit'}-" \
                   f"{uuid.uuid4().hex[:16]}"
            url = self.work.part(job_id, name)
            if pending:
                self.work.write(url, parts.encode((entry.index, entry.line) for entry in pending))
            answer = cast(list[Any], self._commit_part(keys=self._commit_keys(job_id) + ([shard_key] if shard_key
                                                                                       else []),
                                                       args=self._commit_args(job_id, name, pending, positions)))
            if int(answer[0]) == 1:
                return len(pending)
            if pending:
                self.work.delete(url)  # refused: never read, and not left behind
            if int(answer[0]) == 0:
                return 0
            assert positions is not None
            taken = {int(position) for position in answer[1:]}
            pending = [entry for entry in pending if positions[entry.index] not in taken]

    @staticmethod
    def _commit_args(job_id: str, name: str, entries: Sequence[ResultEntry],
                     positions: Mapping[int, int] | None) -> list[str | int]:
        done = [entry for entry in entries if entry.outcome == "done"]
        located = [positions[entry.index] for entry in entries] if positions is not None else []
        verify = [entry.index for entry in done if entry.verify]
        retry = [value for entry in entries if entry.outcome == "retryable"
                 for value in (entry.index, entry.retry_item)]
        return [job_id, name, len(done), len(entries) - len(done), sum(e.prompt_tokens for e in entries),
                sum(e.completion_tokens for e in entries), sum(e.cached_prompt_tokens for e in entries),
                len(located), *located, len(verify), *verify, len(retry), *retry,
                len(entries), *(entry.index for entry in entries)]

    def settled(self, shard_key: str, indices: Sequence[int]) -> set[int]:
        """Which of a shard's ``indices`` (in shard order) already have a result."""
        marker = cast(bytes | None, self.client.get(shard_key)) or b""
        return {index for position, index in enumerate(indices)
                if position >> 3 < len(marker) and marker[position >> 3] & (0x80 >> (position & 7))}

    def take_failed(self, job_id: str) -> tuple[list[int], list[dict[str, Any]]]:
        """Void every retryable failure of the job so that it can run again; returns their indices and the
        shard items that run them again."""
        part = functools.partial(self.keys.job_part, job_id)
        keys = [part("failed"), self.job_key(job_id), part("retry"), self.keys.finalize, part("voided")]
        indices, items = self._take_failed(keys=keys, args=[job_id])
        return sorted(int(index) for index in indices), [json.loads(item) for item in items]

    def part_entries(self, job_id: str) -> list[PartEntry]:
        """The job's committed result parts, in commit order."""
        return [PartEntry.parse(raw) for raw in
                cast(list[bytes], self.client.lrange(self.keys.job_part(job_id, "parts"), 0, -1))]

    def results(self, job_id: str, total: int, leave_out: Iterable[int] = (),
                without: Iterable[PartEntry] = ()) -> Iterator[tuple[int, str | None]]:
        """``(index, result line or None)`` of every item in input order, merged from the committed parts (but the
        parts ``without``; None too for the indices in ``leave_out``)."""
        skip = {entry.name for entry in without}
        urls = [self.work.part(job_id, entry.name) for entry in self.part_entries(job_id) if entry.name not in skip]
        voided = {int(index) for index in
                  cast(set[bytes], self.client.smembers(self.keys.job_part(job_id, "voided")))}
        return parts.merged(urls, self.work.read, total, voided | set(leave_out))

    def replace_lost_parts(self, job_id: str, settlement: int, lost: Sequence[PartEntry], done: int, failed: int,
                           entries: Sequence[ResultEntry]) -> bool:
        """Replace lost parts with one part of ``entries`` (retryable failures) and set the job's counts to
        ``done`` and ``failed``, unless the job moved since its ``settlement`` generation was read; True if
        replaced."""
        name = f"lost-{uuid.uuid4().hex[:16]}"
        url = self.work.part(job_id, name)
        self.work.write(url, parts.encode((entry.index, entry.line) for entry in entries))
        part = functools.partial(self.keys.job_part, job_id)
        replaced = bool(self._replace_lost(
            keys=[self.job_key(job_id), part("parts"), part("failed"), part("retry"), self.keys.finalize],
            args=[job_id, settlement, done, failed, sum(entry.prompt_tokens for entry in lost),
                  sum(entry.completion_tokens for entry in lost), sum(entry.cached_prompt_tokens for entry in lost),
                  f"{name} 0 0 0", len(lost), *(entry.entry for entry in lost),
                  *(value for entry in entries for value in (entry.index, entry.retry_item))]))
        if not replaced:
            self.work.delete(url)
        return replaced

    # Verification

    def save_verify_specs(self, job_id: str, specs: Mapping[int, str]) -> None:
        """Keep each item's ``verify`` spec (JSON) for the executor pool: in the job's work folder, a file per
        ``specs.SPEC_CHUNK_ITEMS`` indices, kept until the job is deleted. A file this store wrote before takes
        the new specs beside its own (submission saves a file's specs at once; this covers other callers)."""
        for chunk, found in spec_files.chunks(specs):
            url = self.work.verify_specs(job_id, chunk)
            if url in self._specs_written:
                found = {**spec_files.decode(url, self.work.read(url)), **found}
            self.work.write(url, spec_files.encode(found))
            self._specs_written[url] = None
            while len(self._specs_written) > SPEC_FILES_REMEMBERED:
                self._specs_written.popitem(last=False)

    def save_range_verify_specs(self, job_id: str, number: int, base: int, specs: Mapping[int, str]) -> None:
        """Keep the ``verify`` specs of range ``number`` of a job rendered on the cluster, whose first item index
        is ``base``: in files of the range's own (``specs.range_chunk``), each written whole from ``specs`` (the
        caller gives each file's specs at once). A range rendered again writes the same bytes: no other task
        writes its files."""
        for chunk, found in spec_files.chunks(specs, base):
            self.work.write(self.work.range_verify_specs(job_id, number, chunk), spec_files.encode(found))

    def verification_input(self, job_id: str, index: int) -> tuple[str | None, str | None]:
        """An item's ``verify`` spec and its committed result line while it awaits its verdict, else
        ``(None, None)``; the spec is None where the job has none for it (deleted meanwhile)."""
        name = cast(bytes | None, self.client.hget(self.keys.job_part(job_id, "verify_at"), str(index)))
        if name is None:
            return None, None
        spec = self._verify_spec(job_id, index)
        if spec is None:
            return None, None
        url = self.work.part(job_id, name.decode())
        return spec, parts.line_of(url, self.work.read(url), index)

    def _verify_spec(self, job_id: str, index: int) -> str | None:
        bases = self._spec_bases.get(job_id)  # a job rendered on the cluster: its ranges' files
        url = (self.work.verify_specs(job_id, index // spec_files.SPEC_CHUNK_ITEMS) if bases is None
               else self.work.range_verify_specs(job_id, *spec_files.range_chunk(bases, index)))
        try:
            return self._spec_cache.get(url, index)
        except StorageError as error:
            if "no such file" not in str(error):
                raise
        # A job submitted by an earlier version keeps its specs in Redis; else the job was deleted.
        legacy = cast(bytes | None, self.client.hget(self.keys.job_part(job_id, "verify"), str(index)))
        return None if legacy is None else legacy.decode()

    def record_verdict(self, job_id: str, index: int, record: str, samples: int, passed: int) -> bool:
        """Store the item's verification record unless it has one (first wins); True if this one was new."""
        part = functools.partial(self.keys.job_part, job_id)
        keys = [part("verdicts"), self.job_key(job_id), self.waiting_key, self.keys.finalize, part("verify_at"),
                part("verdicted"), self.keys.verdicts_unflushed]
        return bool(self._verdict(keys=keys,
                                  args=[index, record, samples, passed, f"{job_id}:{index}", job_id]))

    def has_verdict(self, job_id: str, index: int) -> bool:
        return bool(self.client.getbit(self.keys.job_part(job_id, "verdicted"), index))

    def flush_verdicts(self, job_id: str, limit: int = VERDICT_PART_ITEMS) -> int:
        """Move the verification records in the job's verdicts hash to verdict parts in its work folder, at most
        ``limit`` a part, until the hash is empty; returns how many moved here. Safe beside verdicts being
        stored and other workers flushing: a part takes only the records still in the hash unchanged."""
        key = self.keys.job_part(job_id, "verdicts")
        moved = 0
        while True:
            records: dict[bytes, bytes] = {}
            for field_name, value in cast(Iterator[tuple[bytes, bytes]], self.client.hscan_iter(key, count=limit)):
                records[field_name] = value
                if len(records) >= limit:
                    break
            complete = len(records) < limit
            name = uuid.uuid4().hex[:16]
            url = self.work.verdict_part(job_id, name)
            if records:
                self.work.write(url, parts.encode((int(index), value.decode()) for index, value in records.items()))
            keys = [key, self.keys.job_part(job_id, "verdict_parts"), self.keys.verdicts_unflushed]
            args: list[EncodableT] = [job_id, name, int(complete)]
            args += [value for pair in records.items() for value in pair]
            taken = int(cast(int, self._flush_verdicts(keys=keys, args=args)))
            if records and not taken:
                self.work.delete(url)
            moved += taken
            if complete or not taken:
                return moved

    def flush_due_verdicts(self, worker: str) -> int:
        """Flush the jobs whose oldest record in Redis waited ``VERDICT_FLUSH_SECONDS`` or that hold
        ``VERDICT_FLUSH_ITEMS`` records, unless another worker did so less than ``VERDICT_FLUSH_ROUND_SECONDS``
        ago; returns how many records moved."""
        if not self.client.set(self.keys.verdict_flush, worker, nx=True, ex=VERDICT_FLUSH_ROUND_SECONDS):
            return 0
        now = float(self.client.time()[0])
        waiting = cast(list[tuple[bytes, float]],
                       self.client.zrange(self.keys.verdicts_unflushed, 0, -1, withscores=True))
        pipe = self.client.pipeline(transaction=False)
        for job_id, _ in waiting:
            pipe.hlen(self.keys.job_part(job_id.decode(), "verdicts"))
        moved = 0
        for (job_id, since), held in zip(waiting, cast(list[int], pipe.execute()), strict=True):
            if held == 0 or held >= VERDICT_FLUSH_ITEMS or since <= now - VERDICT_FLUSH_SECONDS:
                moved += self.flush_verdicts(job_id.decode())
        return moved

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

    def iter_verdicts(self, job_id: str, total: int) -> Iterator[str | None]:
        """Each item's verification record in index order (None where it has none): its verdict parts merged
        with the records still in Redis (read together in one step, so a record a flush moves meanwhile is in
        one or the other)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.lrange(self.keys.job_part(job_id, "verdict_parts"), 0, -1)
        pipe.hgetall(self.keys.job_part(job_id, "verdicts"))
        names, held = cast(tuple[list[bytes], dict[bytes, bytes]], pipe.execute())
        urls = [self.work.verdict_part(job_id, name.decode()) for name in names]
        in_redis = parts.encode((int(index), record.decode()) for index, record in held.items())

        def read(url: str) -> bytes:
            return in_redis if url == IN_REDIS else self.work.read(url)

        return (record for _, record in parts.merged([*urls, IN_REDIS], read, total, set()))

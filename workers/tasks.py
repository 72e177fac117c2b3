"""The shard task: run a stored shard through the engine and store each item's result exactly once."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from celery import Celery

from dscbatch.core.celery_app import RUN_SHARD
from dscbatch.core.errors import RequestError
from dscbatch.jobs.grouping import folded_items, item_indices
from dscbatch.jobs.results import ItemInfo, Output, Usage, result_line
from dscbatch.jobs.store import JobStore, ResultEntry
from dscbatch.workers.batching import EngineLoop
from dscbatch.workers.engine import EngineRequest, EngineResult
from dscbatch.workers.observer import WorkerObserver
from dscbatch.workers.prompts import Gather, engine_requests

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ShardReport:
    items: int
    skipped: int  # already had a result: a redelivered shard
    stored: int


def _entries(payload: dict[str, Any], item: dict[str, Any], result: EngineResult) -> list[ResultEntry]:
    """The result record of the item and of each duplicate folded into it (same outputs, own id)."""
    common = {"model": payload["model"], "job_id": payload["job"], "created": payload["created"]}
    infos = [ItemInfo.from_shard_item(each) for each in folded_items(item)]
    if result.error is not None:
        # ``retry`` rebuilds a shard from the item (with its duplicates) once the shard itself is gone.
        return [ResultEntry(info.index, result_line(info, error_code=result.error.code,
                                                    error_message=result.error.message, **common), "retryable",
                            retry_item=json.dumps(item, separators=(",", ":")) if info is infos[0] else "")
                for info in infos]
    outputs = [Output(c.text, c.finish_reason, len(c.token_ids), c.logprobs) for c in result.outputs]
    usage = Usage(result.prompt_tokens, sum(o.completion_tokens for o in outputs), result.cached_prompt_tokens)
    # Each record shows the usage of the run that answered it; the job's token counters count that run once.
    verified = {each["i"] for each in folded_items(item) if each.get("verify")}
    return [ResultEntry(info.index, result_line(info, outputs=outputs, usage=usage, **common), "done",
                        *((usage.prompt_tokens, usage.completion_tokens, usage.cached_prompt_tokens)
                          if info is infos[0] else (0, 0, 0)), verify=info.index in verified)
            for info in infos]


# A shard started this many times (its worker died each time) runs its items one at a time afterwards, and
# an item running alone when its worker died this many times becomes an error record: a poison request
# cannot stop a job for ever.
MAX_SHARD_ATTEMPTS = 3
MAX_ITEM_CRASHES = 2
# Results reach Redis at least this often while a shard runs (see _Unstored).
RECORD_EVERY_SECONDS = 1.0

Requeue = Callable[[str, str], None]  # (job id, shard key): put the shard back on its queue
# (job id, item indices): queue the verification of results just stored. A worker that dies between storing
# and queueing leaves them in the store's waiting set, which the executor pool sweeps (executor/worker.py).
QueueVerification = Callable[[str, list[int]], None]


class _Unstored:
    """A running shard's result entries not yet in the store. They are stored at least every
    ``RECORD_EVERY_SECONDS``, also while no new result comes (the engine busy with the shard's long requests):
    the job's progress shows them, and a worker that dies loses little."""

    def __init__(self, record: Callable[[list[ResultEntry]], int]) -> None:
        self._record = record
        self.entries: list[ResultEntry] = []
        self.stored = 0  # entries that were new in the store (an item's first result)
        self._recorded_at = time.monotonic()

    def store_if_due(self) -> None:
        if self.entries and time.monotonic() - self._recorded_at >= RECORD_EVERY_SECONDS:
            self.store()

    def store(self) -> None:
        self.stored += self._record(self.entries)
        self.entries, self._recorded_at = [], time.monotonic()


class ShardRunner:
    """Runs shards, several at once (one per pool thread), through one engine loop; told to stop, it hands
    the rest of each long shard back within a bound."""

    def __init__(self, store: JobStore, loop: EngineLoop, observer: WorkerObserver, requeue: Requeue,
                 name: str, verify: QueueVerification, finalize_soon: Callable[[], None]) -> None:
        self.name = name  # the worker's hostname, under which it claims the shards it runs
        self.store = store
        self.loop = loop
        self.observer = observer
        self.requeue = requeue
        self.verify = verify
        self.finalize_soon = finalize_soon
        self.stop_at: float | None = None
        self._running: set[str] = set()  # shard keys this worker runs now
        self._running_lock = threading.Lock()

    def running(self) -> set[str]:
        """The shard keys this worker runs now (each from before its claim until after its release)."""
        with self._running_lock:
            return set(self._running)

    def stop_within(self, seconds: float) -> None:
        """Finish the running shard if it ends within ``seconds``; else store what is done and requeue it."""
        self.stop_at = time.monotonic() + seconds

    def _must_stop(self) -> bool:
        return self.stop_at is not None and time.monotonic() >= self.stop_at

    def run(self, job_id: str, shard_key: str) -> ShardReport:
        with self._running_lock:
            if shard_key in self._running:
                # Redelivered (a visibility timeout shorter than the shard) to the worker that runs it: the
                # running copy stores its results or hands it back, so this copy only wasted the engine.
                log.warning("%s: already running in this worker; dropping the redelivered copy", shard_key)
                return ShardReport(0, 0, 0)
            self._running.add(shard_key)
        try:
            # Claim first: a worker that dies after its message is delivered but before the claim leaves the
            # shard to Redis's visibility timeout, so that window is kept as short as it can be.
            attempts = self.store.claim(self.name, job_id, shard_key)
            try:
                return self._run_claimed(job_id, shard_key, attempts)
            finally:
                self.store.release(self.name, shard_key)
        finally:
            with self._running_lock:
                self._running.discard(shard_key)

    def _run_claimed(self, job_id: str, shard_key: str, attempts: int) -> ShardReport:
        started = time.monotonic()
        payload = self.store.load_shard(shard_key)
        if payload is None:
            log.info("skipping %s: finished, or its job deleted", shard_key)
            self.store.drop_shard(job_id, shard_key, [])  # the attempt counted by the claim
            return ShardReport(0, 0, 0)
        if self.store.is_cancelled(job_id):
            log.info("skipping %s: job cancelled", shard_key)
            return ShardReport(0, 0, 0)
        items = payload["items"]
        indices = [index for item in items for index in item_indices(item)]
        positions = {index: position for position, index in enumerate(indices)}
        settled = self.store.settled(shard_key, indices)
        todo = {str(item["i"]): item for item in items if not settled.issuperset(item_indices(item))}
        requests = [request for key, item in todo.items() for request in engine_requests(key, item, payload["stop"])]
        gather = Gather(requests)
        self.observer.shard_started(job_id, len(requests))
        isolating = attempts > MAX_SHARD_ATTEMPTS
        if isolating:
            log.warning("%s: started %d times; running its items one at a time", shard_key, attempts)
        results: list[EngineResult] = []
        unstored = _Unstored(lambda entries: self._record(job_id, entries, shard_key, positions))
        stream = (self._one_at_a_time(job_id, requests, unstored.store_if_due) if isolating
                  else self.loop.stream(requests, should_stop=self._must_stop, idle=unstored.store_if_due))
        try:
            for answer in stream:
                if (result := gather.add(answer)) is None:
                    continue  # a prompt of an item with several, whose others have not all finished
                results.append(result)
                unstored.entries += _entries(payload, todo[result.key], result)
                if isolating:
                    unstored.store()
                else:
                    unstored.store_if_due()
        finally:
            stream.close()
            unstored.store()
        stored = unstored.stored
        self.observer.shard_finished(job_id, results, len(settled), time.monotonic() - started)
        if len(results) < len(todo):
            self.requeue(job_id, shard_key)
            log.warning("%s: stopping; %d items stored, the other %d handed back to the queue", shard_key,
                        len(results), len(todo) - len(results))
        else:
            self._finished(job_id, shard_key, indices)
        log.info("%s: %d items, %d already done, %d stored", shard_key, len(items), len(settled), stored)
        return ShardReport(len(items), len(settled), stored)

    def _finished(self, job_id: str, shard_key: str, indices: list[int]) -> None:
        """Every item of the shard has its result: drop the shard (before its message is acknowledged, so a
        worker killed in between leaves the shard to run again, which finds nothing to do and finishes here),
        and when that settled the job have the housekeeping thread write its results file at once, off this
        shard slot. Results Redis has lost since they were stored (a crash that cost the tail of its
        append-only file) keep the shard: it is queued again and runs them."""
        missing = self.store.drop_shard(job_id, shard_key, indices)
        if missing:
            log.warning("%s: %d stored results are no longer in Redis (did it restart from an older state?); "
                        "queueing the shard again", shard_key, len(missing))
            self.requeue(job_id, shard_key)
        elif self.store.settlement(job_id) is not None:
            self.finalize_soon()

    def _record(self, job_id: str, entries: list[ResultEntry], shard_key: str, positions: dict[int, int]) -> int:
        """Store the entries, then queue the verification of those that need one."""
        stored = self.store.record(job_id, entries, shard_key, positions)
        verify = [entry.index for entry in entries if entry.verify]
        if verify:
            self.verify(job_id, verify)
        return stored

    def _one_at_a_time(self, job_id: str, requests: list[EngineRequest],
                       idle: Callable[[], None]) -> Generator[EngineResult, None, None]:
        """Run each request alone, so that a request which kills the engine is the only one in flight when
        it does; one that did so ``MAX_ITEM_CRASHES`` times becomes an error record instead of running."""
        with self.loop.alone():
            for request in requests:
                if self._must_stop():
                    return
                crashes = self.store.item_attempt(job_id, request.key) - 1
                if crashes >= MAX_ITEM_CRASHES:
                    error = RequestError("engine_error", f"the request stopped the engine {crashes} times; it "
                                                         "is not run again (`dscbatch retry` runs it once more)")
                    yield EngineResult.failed(request, error)
                    continue
                yield from self.loop.stream([request], should_stop=self._must_stop, idle=idle)


def register_tasks(app: Celery, runner: ShardRunner) -> None:
    @app.task(name=RUN_SHARD, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def run_shard(job_id: str, shard_key: str) -> None:
        runner.run(job_id, shard_key)

"""One engine batch across shard boundaries: a thread that owns the engine and serves every running shard.

Run one shard at a time and the engine's batch drains at each shard's end: its longest requests run
nearly alone. Instead a worker holds a few shards at once (Celery's thread pool) and their requests all go
to this loop, which steps the engine while any run. A held shard's requests enter as soon as the engine
has a free place in its batch (fewer requests than vLLM's ``max_num_seqs``), so the next shard's requests
join while earlier shards' tails finish, and shards do not all start, and drain, in step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field

from dscbatch.core import threads
from dscbatch.core.errors import EngineError
from dscbatch.core.settings import MAX_SHARDS_IN_FLIGHT
from dscbatch.workers.engine import EngineRequest, EngineResult, Serving

log = logging.getLogger(__name__)

# Exit status of a worker whose engine died: the supervisor (k8s, `dscbatch run`) starts a fresh one.
ENGINE_DIED_EXIT = 70
# How often a shard waiting for results checks whether it must stop.
STOP_CHECK_SECONDS = 0.1


@dataclass
class _Batch:
    """One caller's requests in the loop; the loop thread puts their results on ``results``."""

    requests: Sequence[EngineRequest]
    results: queue.SimpleQueue[EngineResult] = field(default_factory=queue.SimpleQueue)
    engine_ids: set[str] = field(default_factory=set)


Command = Callable[[], None]


def default_shards_in_flight(max_num_seqs: int, shard_max_requests: int) -> int:
    """Shards a worker holds when ``DSCBATCH_SHARDS_IN_FLIGHT`` is not set: enough for two full batches, plus
    one, so that shards in their tails (a few long requests each) still leave the batch full."""
    return max(2, min(MAX_SHARDS_IN_FLIGHT, math.ceil(2 * max_num_seqs / shard_max_requests) + 1))


class EngineLoop(threading.Thread):
    """Drives the engine from one thread; ``stream`` may be called from any number of threads."""

    def __init__(self, engine: Serving) -> None:
        super().__init__(name="dscbatch-engine", daemon=True)
        self.engine = engine
        self._inbox: queue.SimpleQueue[Command | None] = queue.SimpleQueue()  # None: stop
        self._owners: dict[str, _Batch] = {}  # engine id of each running request: its batch
        # Admission: a stream waits for room in the engine's batch; isolation (``alone``) waits for other
        # streams to end and holds new ones back.
        self._gate = threading.Condition()
        self._in_engine = 0  # requests admitted and not yet finished or aborted
        self._streams = 0
        self._alone: int | None = None  # the thread that runs alone

    def stream(self, requests: Sequence[EngineRequest], should_stop: Callable[[], bool],
               idle: Callable[[], None] | None = None) -> Generator[EngineResult, None, None]:
        """Each request's result as it finishes; stopping (also while waiting for room) or closing early
        aborts the rest. ``idle`` runs in the caller's thread whenever ``STOP_CHECK_SECONDS`` pass without a
        result: its periodic work while the engine is busy with long requests."""
        with self._admitted(len(requests), should_stop) as admitted:
            if not admitted:
                return
            batch = _Batch(requests)
            self._inbox.put(lambda: self._add(batch))
            remaining = len(requests)
            try:
                while remaining and not should_stop():
                    try:
                        result = batch.results.get(timeout=STOP_CHECK_SECONDS)
                    except queue.Empty:
                        if idle is not None:
                            idle()
                        continue
                    remaining -= 1
                    yield result
            finally:
                if remaining:
                    self._inbox.put(lambda: self._abort(batch))

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        """While this is open, only this thread's streams run (a suspected poison request's run must not
        take another shard's requests down with it, nor be blamed for theirs)."""
        me = threading.get_ident()
        with self._gate:
            self._gate.wait_for(lambda: self._alone is None)
            self._alone = me  # no other stream is admitted from here: those running drain
            self._gate.wait_for(lambda: self._streams == 0)
        try:
            yield
        finally:
            with self._gate:
                self._alone = None
                self._gate.notify_all()

    @contextlib.contextmanager
    def _admitted(self, count: int, should_stop: Callable[[], bool]) -> Iterator[bool]:
        """Waits for room in the engine's batch (and for no other thread to run alone); gives False when told
        to stop first."""
        me = threading.get_ident()
        capacity = self.engine.max_num_seqs
        with self._gate:
            while not (ready := self._alone in (None, me) and self._in_engine < capacity) and not should_stop():
                self._gate.wait(STOP_CHECK_SECONDS)
            if ready:
                self._streams += 1
                self._in_engine += count
        if not ready:
            yield False
            return
        try:
            yield True
        finally:
            with self._gate:
                self._streams -= 1
                self._gate.notify_all()

    def _left_engine(self, count: int) -> None:
        with self._gate:
            self._in_engine -= count
            self._gate.notify_all()

    def start(self) -> None:
        threads.watch(self)
        super().start()

    def stop(self) -> None:
        """End the loop (running requests are left to the engine's shutdown)."""
        threads.unwatch(self)
        self._inbox.put(None)
        self.join()

    def run(self) -> None:
        try:
            while True:
                # Block for work only when nothing runs; otherwise take whatever arrived, then step.
                commands = [self._inbox.get()] if not self._owners else []
                with contextlib.suppress(queue.Empty):
                    while True:
                        commands.append(self._inbox.get_nowait())
                for command in commands:
                    if command is None:
                        return
                    command()
                if self._owners:
                    finished = self.engine.step()
                    for engine_id, result in finished:
                        self._owners.pop(engine_id).results.put(result)
                    if finished:
                        self._left_engine(len(finished))
        except EngineError:
            # Without an engine this worker can serve nothing: its claimed shards go to other workers.
            threads.die("the vLLM engine failed", ENGINE_DIED_EXIT)
        except Exception:  # a bug (in abort, sampling parameters) would leave every shard waiting
            threads.die("the engine loop failed unexpectedly")

    def _add(self, batch: _Batch) -> None:
        refused = 0
        for request in batch.requests:
            engine_id, failed = self.engine.add(request)
            if failed is not None:
                batch.results.put(failed)
                refused += 1
            else:
                batch.engine_ids.add(engine_id)
                self._owners[engine_id] = batch
        if refused:
            self._left_engine(refused)

    def _abort(self, batch: _Batch) -> None:
        running = [engine_id for engine_id in batch.engine_ids if engine_id in self._owners]
        for engine_id in running:
            del self._owners[engine_id]
        self.engine.abort(running)
        self._left_engine(len(running))

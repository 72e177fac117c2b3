"""One engine batch across shard boundaries: a thread that owns the engine and serves every running shard.

Run one shard at a time and the engine's batch drains at each shard's end: its longest requests run
nearly alone. Instead the worker runs a few shards at once (Celery's thread pool) and their requests all
go to this loop, which adds them as they arrive and steps the engine while any run, so the next shard's
requests join while the previous shard's tail finishes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field

from dscbatch.jobs.errors import EngineError
from dscbatch.workers.engine import Engine, EngineRequest, EngineResult

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


class EngineLoop(threading.Thread):
    """Drives the engine from one thread; ``stream`` may be called from any number of threads."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(name="dscbatch-engine", daemon=True)
        self.engine = engine
        self._inbox: queue.SimpleQueue[Command | None] = queue.SimpleQueue()  # None: stop
        self._owners: dict[str, _Batch] = {}  # engine id of each running request: its batch
        # Isolation (``alone``) waits for other streams to end and holds new ones back.
        self._gate = threading.Condition()
        self._streams = 0
        self._alone: int | None = None  # the thread that runs alone

    def stream(self, requests: Sequence[EngineRequest],
               should_stop: Callable[[], bool]) -> Generator[EngineResult, None, None]:
        """Each request's result as it finishes; stopping or closing early aborts the rest."""
        with self._admitted():
            batch = _Batch(requests)
            self._inbox.put(lambda: self._add(batch))
            remaining = len(requests)
            try:
                while remaining and not should_stop():
                    try:
                        result = batch.results.get(timeout=STOP_CHECK_SECONDS)
                    except queue.Empty:
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
            self._gate.wait_for(lambda: self._alone is None and self._streams == 0)
            self._alone = me
        try:
            yield
        finally:
            with self._gate:
                self._alone = None
                self._gate.notify_all()

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._gate:
            self._gate.wait_for(lambda: self._alone in (None, me))
            self._streams += 1
        try:
            yield
        finally:
            with self._gate:
                self._streams -= 1
                self._gate.notify_all()

    def stop(self) -> None:
        """End the loop (running requests are left to the engine's shutdown)."""
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
                    for engine_id, result in self.engine.step():
                        self._owners.pop(engine_id).results.put(result)
        except EngineError:
            # Without an engine this worker can serve nothing: its claimed shards go to other workers.
            log.critical("the vLLM engine failed; exiting with status %d", ENGINE_DIED_EXIT, exc_info=True)
            os._exit(ENGINE_DIED_EXIT)

    def _add(self, batch: _Batch) -> None:
        for request in batch.requests:
            engine_id, refused = self.engine.add(request)
            if refused is not None:
                batch.results.put(refused)
            else:
                batch.engine_ids.add(engine_id)
                self._owners[engine_id] = batch

    def _abort(self, batch: _Batch) -> None:
        running = [engine_id for engine_id in batch.engine_ids if engine_id in self._owners]
        for engine_id in running:
            del self._owners[engine_id]
        self.engine.abort(running)

"""The long-lived threads of a worker or executor, and what happens when one of them fails.

A process serves only while its background threads run: a worker whose engine loop is gone leaves every shard
waiting for results that never come, one whose heartbeat thread is gone has its shards requeued by others while
it still runs them. So:

- A loop thread (:class:`LoopThread`: heartbeat, housekeeping, the executor's sweeper) survives anything a round
  raises: the error is logged with its traceback and the next round runs (a Redis hiccup, a process that
  vanished while ``psutil`` read it).
- A thread that cannot go on (the engine loop) ends the process with :data:`THREAD_DIED_EXIT` (:func:`die`), so
  its supervisor (Kubernetes, ``dscbatch run``) starts a fresh one and its claimed shards go to other workers.
- Either way ``/healthz`` answers 503 once any :func:`watch`-ed thread is no longer alive (:func:`gone`).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from typing import NoReturn

from dscbatch.core.process_exit import exit_process

log = logging.getLogger(__name__)

# Exit status of a process one of whose essential threads failed unexpectedly.
THREAD_DIED_EXIT = 71

_watched: set[threading.Thread] = set()
_lock = threading.Lock()


def watch(thread: threading.Thread) -> None:
    """Count ``thread`` as essential: the process is unhealthy once it has ended."""
    with _lock:
        _watched.add(thread)


def unwatch(thread: threading.Thread) -> None:
    """``thread`` is being stopped on purpose (the process is shutting down)."""
    with _lock:
        _watched.discard(thread)


def gone() -> list[str]:
    """The names of watched threads that were started and have ended."""
    with _lock:
        return sorted(thread.name for thread in _watched if thread.ident is not None and not thread.is_alive())


def die(what: str, code: int = THREAD_DIED_EXIT) -> NoReturn:
    """From an ``except`` block: log the error with its traceback and end the process with ``code``."""
    log.critical("%s; exiting with status %d", what, code, exc_info=True)
    exit_process(code)


class LoopThread(threading.Thread, ABC):
    """Runs :meth:`round` every ``interval`` seconds (or at once when woken) until :meth:`stop`; a round that
    raises is logged and the loop goes on. ``delay_first``: wait one interval before the first round."""

    interval: float = 10.0
    delay_first = False

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stopping = threading.Event()
        self._woken = threading.Event()

    @abstractmethod
    def round(self) -> None:
        """One round of the loop's work."""

    def start(self) -> None:
        watch(self)
        super().start()

    def run(self) -> None:
        if self.delay_first and self._pause():
            return
        while not self.stopping.is_set():
            try:
                self.round()
            except Exception as error:  # the thread must outlive any one round
                self.failed(error)
            self._pause()

    def _pause(self) -> bool:
        """Wait ``interval`` seconds, or until woken; whether the thread is stopping."""
        self._woken.wait(self.interval)
        self._woken.clear()
        return self.stopping.is_set()

    def wake(self) -> None:
        """Run the next round now rather than at the end of the interval."""
        self._woken.set()

    def failed(self, error: Exception) -> None:
        """A round raised ``error``: log it with its traceback (subclasses may say more)."""
        log.error("%s: a round failed; the next one runs in %.0f s", self.name, self.interval, exc_info=error)

    def stop(self) -> None:
        unwatch(self)
        self.stopping.set()
        self._woken.set()

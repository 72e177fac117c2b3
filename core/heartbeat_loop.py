"""The heartbeat loop of every queue consumer: a worker's (workers/liveness.py) and an executor's (executor/worker.py).

Every ``HEARTBEAT_SECONDS`` the thread tells Redis its process is alive for ``HEARTBEAT_TTL_SECONDS`` (:meth:`beat`),
then does its upkeep: what a consumer that died left behind (:meth:`upkeep`). A Redis error (or any other) is
logged and the next round tries again (``core.threads.LoopThread``); the process serves on meanwhile, and its
``/healthz`` turns 503 once the last heartbeat is older than the TTL, or the thread is gone.
"""

from __future__ import annotations

import logging
from abc import abstractmethod

from dscbatch.core.threads import LoopThread

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10
# After this long without a heartbeat a consumer counts as gone: its Redis key expires, /healthz answers 503.
HEARTBEAT_TTL_SECONDS = 3 * HEARTBEAT_SECONDS


class HeartbeatLoop(LoopThread):
    """Subclasses say what a beat and the upkeep are; ``what`` names the heartbeat in the log."""

    interval = HEARTBEAT_SECONDS
    # The errors of an unreachable Redis, logged as a warning: core is below the store, so a subclass names them
    # (``jobs.store.StoreUnavailable``).
    unavailable: tuple[type[Exception], ...] = ()

    def __init__(self, name: str, what: str) -> None:
        super().__init__(name=name)
        self.what = what

    @abstractmethod
    def beat(self) -> None:
        """Tell Redis (and the process's /healthz) that it is alive for the next ``HEARTBEAT_TTL_SECONDS``."""

    @abstractmethod
    def upkeep(self) -> None:
        """Take over what a dead consumer left: a worker requeues orphaned shards, an executor stale verifications."""

    def round(self) -> None:
        self.beat()
        self.upkeep()

    def failed(self, error: Exception) -> None:
        if isinstance(error, self.unavailable):
            log.warning("%s to Redis failed; retrying", self.what, exc_info=error)
        else:
            super().failed(error)

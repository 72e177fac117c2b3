"""The Celery consumer of dscbatch's workers and executors: Celery's own, surviving a broker lost mid-task.

On a lost connection Celery 5.7 collects the connection, then closes it; closing a Redis channel that holds
unacknowledged deliveries (the shards a worker is running) restores them through the transport that collect
has already cleared, and kombu raises ``AttributeError`` (no ``hostname``) where Celery expects a connection
error. Celery calls that an "Unrecoverable error": the worker stops consuming for good while its heartbeat goes
on. Here the close of the dead connection is quiet instead, so the consumer reconnects as it would otherwise;
the deliveries stay in Redis's unacknowledged set (their shards come back after the visibility timeout, or at
once through the claims of a worker that is gone).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

log = logging.getLogger(__name__)


def _quiet(close: Callable[[], Any]) -> Callable[[], None]:
    @functools.wraps(close)
    def quiet_close() -> None:
        try:
            close()
        except AttributeError as error:  # the collected transport; nothing of the dead connection is left open
            log.info("closing the lost broker connection: %r (its deliveries stay unacknowledged)", error)
    return quiet_close


class Consumer(CeleryConsumer):  # type: ignore[misc]
    def on_connection_error_after_connected(self, exc: Exception) -> None:
        if self.connection is not None:
            self.connection.close = _quiet(self.connection.close)
        super().on_connection_error_after_connected(exc)

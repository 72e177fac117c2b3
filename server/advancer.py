"""The Batch API's state moves without readers: a thread of ``dscbatch serve`` advances every batch that has not
ended (``BatchService.advance``) about once a second, so a batch nobody polls still completes (its output and error
files written, its ``completed_at`` within seconds of its job's end) or expires on time. Several servers may
share one Redis: a lock (``P:batches:advance``) lets one of them advance at a time."""

from __future__ import annotations

import logging
import socket

from dscbatch.core.threads import LoopThread
from dscbatch.server.batches import BatchService

log = logging.getLogger(__name__)

ADVANCE_SECONDS = 1.0
# How long a server that died while advancing holds the others back at most.
ADVANCE_LOCK_SECONDS = 120


class BatchAdvancer(LoopThread):
    interval = ADVANCE_SECONDS

    def __init__(self, batches: BatchService) -> None:
        super().__init__(name="dscbatch-batch-advancer")
        self.batches = batches
        self.holder = f"{socket.gethostname()}-{id(self)}"

    def round(self) -> None:
        store = self.batches.store
        if not store.lock(store.keys.batches_advance, self.holder, ADVANCE_LOCK_SECONDS):
            return
        try:
            for batch_id in store.active_batches():
                status = self.batches.advance(batch_id)
                if status in ("completed", "cancelled", "expired"):
                    log.info("batch %s: %s", batch_id, status)
        finally:
            store.unlock(store.keys.batches_advance)

"""A waiting command's note when no live worker serves the queue it waits on: without it, ``submit --wait`` (or
``submit --render cluster``, whose render tasks wait on the render queue) shows 0 items for as long as no worker
starts, and says nothing of why. Not an error: a pool that scales from zero (KEDA) starts its workers because
the queue is long."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from dscbatch.jobs.store import JobStore

# How long a command waits before it looks: a worker that has just started (or the pool's first pod) has its
# heartbeat in Redis by then.
NOTICE_AFTER_SECONDS = 5.0


class NoWorkerNotice:
    """Call it while waiting on ``queue`` (the model's shard queue). The first call after ``after`` seconds looks
    once whether a live worker serves it (with ``render``: its render tasks, which render-only workers serve
    too) and, where none does, says so on ``stream`` in one line."""

    def __init__(self, store: JobStore, queue: str, model: str, *, render: bool = False,
                 stream: TextIO = sys.stderr, after: float = NOTICE_AFTER_SECONDS) -> None:
        self.store = store
        self.queue = queue
        self.model = model
        self.render = render
        self.stream = stream
        self.look_at = time.monotonic() + after
        self.looked = False

    def __call__(self) -> None:
        if self.looked or time.monotonic() < self.look_at:
            return
        self.looked = True
        from dscbatch.core.celery_app import render_queue  # Celery: only for a command that queues

        if self._served(render_queue(self.queue)):
            return
        start = f"`dscbatch worker --model {self.model}`"
        what = f"its shards ({self.queue})"
        if self.render:
            what = f"its render tasks ({render_queue(self.queue)})"
            start += f" or `dscbatch worker --model {self.model} --render-only`"
        self.stream.write(("\n" if self.stream.isatty() else "") + f"note: no live worker serves {what}; they "
                          f"wait on the queue until one starts: {start} with this DSCBATCH_REDIS_URL and "
                          "DSCBATCH_KEY_PREFIX\n")
        self.stream.flush()

    def _served(self, renders: str) -> bool:
        queues = {str(info.get("queue")) for info in self.store.workers().values()}
        if self.render:  # a worker with an engine serves its queue's render tasks too
            queues |= {str(info.get("queue")) for info in self.store.workers(render_only=True).values()}
            return bool({self.queue, renders} & queues)
        return self.queue in queues

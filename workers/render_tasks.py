"""The render task a worker serves beside its shards (``jobs.clusterrender``): count or render one byte range of
a job's input on this machine's CPU, with the model's tokenizer loaded once per process."""

from __future__ import annotations

import logging
import threading

from celery import Celery, signals
from celery.exceptions import Reject

from dscbatch.core.celery_app import RENDER_RANGE, enqueue_shard
from dscbatch.jobs.clusterrender import run_range_task
from dscbatch.jobs.rangerender import RenderStopped
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.store.ranges import range_task
from dscbatch.jobs.tokenizer import ModelTokenizer

log = logging.getLogger(__name__)


def register_render_task(app: Celery, store: JobStore, model: str, hostname: str) -> None:
    tokenizer: list[ModelTokenizer] = []

    def enqueue(queue: str, job_id: str, shard_key: str) -> None:
        enqueue_shard(app, queue, job_id, shard_key)

    def load() -> ModelTokenizer:
        if not tokenizer:
            tokenizer.append(ModelTokenizer.load(model))
        return tokenizer[0]

    # A worker told to stop (SIGTERM: Celery's warm shutdown would wait for the task, however long its range)
    # stops its render task between chunks and puts it back on the queue, for another worker.
    stopping = threading.Event()
    signals.worker_shutting_down.connect(lambda **_: stopping.set(), weak=False)

    @app.task(name=RENDER_RANGE, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def render_range(job_id: str, number: int, first_line: int, first_index: int) -> None:
        try:
            run_range_task(store, enqueue, load, hostname, job_id, number, first_line, first_index, stopping.is_set)
        except RenderStopped as stopped:
            log.warning("render task %s %s: this worker shuts down; the task goes back on the queue",
                        range_task(job_id, number, first_line), stopped)
            raise Reject(str(stopped), requeue=True) from None

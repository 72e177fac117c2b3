"""The curate task: screen one part of a ``dscbatch curate --executors`` run (curation/distributed.py).

A part's screening is stored once under its own name, so a task delivered twice (its executor killed before
the acknowledgement) or sent again by the coordinator stores one screening.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery

from dscbatch.core.celery_app import ENQUEUED_HEADER, executor_queue
from dscbatch.curation.distributed import screen_part

SCREEN_PART = "dscbatch.curate_screen"


def enqueue_part(app: Celery, prefix: str, spec: dict[str, Any]) -> None:
    app.send_task(SCREEN_PART, args=[spec], queue=executor_queue(prefix), headers={ENQUEUED_HEADER: time.time()})


def register_curate_tasks(app: Celery) -> None:
    @app.task(name=SCREEN_PART, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def screen(spec: dict[str, Any]) -> None:
        screen_part(spec)

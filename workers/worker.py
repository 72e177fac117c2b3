"""``dscbatch worker``: start one vLLM engine, then serve the model's queue with a thread pool.

The engine lives in the main process (vLLM starts child processes of its own, which a prefork pool's
daemonic children may not do) and one thread drives it (``batching.EngineLoop``); the pool's
``shards_in_flight`` threads each run a shard through that loop.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery, signals

from dscbatch.core.celery_app import (
    enqueue_shard,
    enqueue_verifications,
    make_app,
    render_queue,
    require_json_only,
    serve,
)
from dscbatch.core.settings import Settings
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import queue_name
from dscbatch.jobs.tokenizer import model_name
from dscbatch.workers.batching import EngineLoop, default_shards_in_flight
from dscbatch.workers.engine import Engine, Serving
from dscbatch.workers.housekeeping import Housekeeper
from dscbatch.workers.liveness import Heartbeat
from dscbatch.workers.observer import WorkerObserver
from dscbatch.workers.render_tasks import register_render_task
from dscbatch.workers.repair import Repairer
from dscbatch.workers.sim_engine import SIM, SimulatedEngine
from dscbatch.workers.tasks import ShardRunner, register_tasks

log = logging.getLogger(__name__)

def run_worker(settings: Settings, model: str, engine_args: Mapping[str, Any], loglevel: str = "INFO",
               observer: WorkerObserver | None = None, engine_kind: str = "vllm") -> int:
    """Serve until Celery stops (SIGTERM, or an unrecoverable error); returns Celery's exit status."""
    observer = observer or WorkerObserver()
    app = make_app(settings)
    require_json_only(app)
    store = JobStore.connect(settings)
    store.work.check_writable()  # a work folder this worker cannot use is one line now, not a failed shard later
    store.work.on_retry = observer.storage_retried
    queue = queue_name(settings.key_prefix, model)
    log.info("starting the engine for %s (queue %s, Redis %s)", model, queue, settings.redacted_redis_url)
    starting = time.monotonic()
    engine: Serving
    if engine_kind == SIM:
        log.warning("SIMULATED engine: no model runs; outputs are deterministic token ids, for control-plane scale "
                    "work only")
        engine = SimulatedEngine(model)
    else:
        engine = Engine(model, engine_args)
    observer.engine_started(time.monotonic() - starting)
    hostname = f"{model_name(model)}@{socket.gethostname()}-{os.getpid()}"
    requeue = _requeuer(app, store, queue)

    loop = EngineLoop(engine)
    loop.start()
    in_flight = settings.shards_in_flight or default_shards_in_flight(engine.max_num_seqs,
                                                                      settings.shard_max_requests)
    log.info("holding up to %d shards at once (engine batch: %d requests)", in_flight, engine.max_num_seqs)
    def verify(job_id: str, indices: list[int]) -> None:
        enqueue_verifications(app, settings.key_prefix, job_id, indices)

    housekeeper = Housekeeper(store, hostname, settings.job_retention, Repairer(store, hostname, queue, requeue))
    runner = ShardRunner(store, loop, observer, requeue, hostname, verify, housekeeper.wake)
    # SIGTERM starts Celery's warm shutdown, which would wait for the running shard without a bound.
    signals.worker_shutting_down.connect(lambda **_: runner.stop_within(settings.shutdown_timeout), weak=False)
    info = {"model": model_name(model), "queue": queue, "pid": os.getpid(), "started": time.time()}
    heartbeat = Heartbeat(store, hostname, info, engine, observer, requeue, runner.running)
    heartbeat.start()
    housekeeper.start()
    try:
        register_tasks(app, runner)
        register_render_task(app, store, model, hostname)
        return serve(app, hostname, [queue, render_queue(queue)], in_flight, loglevel)
    finally:
        housekeeper.stop()
        heartbeat.stop()
        loop.stop()
        engine.close()


def run_render_worker(settings: Settings, model: str, loglevel: str = "INFO",
                      observer: WorkerObserver | None = None) -> int:
    """Serve only the model's render queue (``submit --render cluster``), one task at a time, without an engine:
    a CPU-only process beside the GPU workers (one per core). Its heartbeat keeps its render claims alive and
    takes over what dead workers left, as a GPU worker's does (and, with ``observer``, keeps /healthz green).
    Returns Celery's exit status."""
    app = make_app(settings)
    require_json_only(app)
    store = JobStore.connect(settings)
    store.work.check_writable()
    queue = queue_name(settings.key_prefix, model)
    hostname = f"render.{model_name(model)}@{socket.gethostname()}-{os.getpid()}"
    log.info("serving the render queue of %s (%s, Redis %s)", model, render_queue(queue),
             settings.redacted_redis_url)
    info = {"model": model_name(model), "queue": render_queue(queue), "pid": os.getpid(), "started": time.time(),
            "render_only": True}
    heartbeat = Heartbeat(store, hostname, info, None, observer or WorkerObserver(), _requeuer(app, store, queue),
                          set)
    heartbeat.start()
    try:
        register_render_task(app, store, model, hostname)
        return serve(app, hostname, render_queue(queue), 1, loglevel)
    finally:
        heartbeat.stop()


def _requeuer(app: Celery, store: JobStore, fallback: str) -> Callable[[str, str], None]:
    """Puts a shard back on its job's queue (a worker takes over the orphans of any model's workers); on
    ``fallback`` once the job is gone (the shard then finds nothing to run)."""
    def requeue(job_id: str, shard_key: str) -> None:
        enqueue_shard(app, store.job_queue(job_id) or fallback, job_id, shard_key)
    return requeue

"""``dscbatch worker``: start one vLLM engine, then serve the model's queue with a solo pool.

The solo pool runs tasks in the main process, which owns the engine: vLLM starts child processes of its
own, which a prefork pool's daemonic children may not do, and one engine per process is the design.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import redis
from dscbatch.jobs.settings import Settings
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import queue_name
from dscbatch.jobs.tokenizer import model_name
from dscbatch.workers.app import make_app, require_json_only
from dscbatch.workers.engine import Engine
from dscbatch.workers.tasks import ShardRunner, register_tasks

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10


def _heartbeat(store: JobStore, hostname: str, info: dict[str, Any], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            store.beat(hostname, {**info, "seen": time.time()}, ttl=3 * HEARTBEAT_SECONDS)
        except redis.RedisError:
            log.warning("heartbeat to Redis failed; retrying", exc_info=True)
        stop.wait(HEARTBEAT_SECONDS)


def run_worker(settings: Settings, model: str, engine_args: Mapping[str, Any], loglevel: str = "INFO") -> None:
    app = make_app(settings)
    require_json_only(app)
    store = JobStore.connect(settings)
    queue = queue_name(settings.key_prefix, model)
    log.info("starting the engine for %s (queue %s, Redis %s)", model, queue, settings.redacted_redis_url)
    engine = Engine(model, engine_args)
    hostname = f"{model_name(model)}@{socket.gethostname()}-{os.getpid()}"
    stop = threading.Event()
    info = {"model": model_name(model), "queue": queue, "pid": os.getpid(), "started": time.time()}
    threading.Thread(target=_heartbeat, args=(store, hostname, info, stop), daemon=True).start()
    try:
        register_tasks(app, ShardRunner(store, engine))
        worker = app.Worker(
            hostname=hostname,
            pool_cls="solo", concurrency=1, queues=[queue], loglevel=loglevel,
            without_gossip=True, without_mingle=True, optimization="fair",
        )
        worker.start()
    finally:
        stop.set()
        engine.close()

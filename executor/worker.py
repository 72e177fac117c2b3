"""``dscbatch executor``: serve the executor queue with a thread pool, each thread one sandboxed program.

At start it runs each language's trivial program (executor/languages.py) and serves the queues of those that
pass: the shared one (Python) and ``PREFIX.executor.LANG`` for each other language; the rest are logged with
the reason, and so is a test dependency a served language lacks here (the Go module, the Rust crates, the Java
jar): a program that needs it gets a final failed verdict naming it, not an error retried by the sweeper.
``DSCBATCH_EXECUTOR_LANGUAGES`` narrows the languages checked (each check compiles a program: all
of them take 10-20 s on two cores).

Concurrency is bounded by the pool (``DSCBATCH_EXECUTOR_CONCURRENCY``, default one per core) and each
program by the sandbox's limits. A sweeper thread beats the executor's heartbeat and queues again the
results that have waited longer than the visibility timeout without a verdict: those whose worker died
between storing them and queueing their task (a task lost with its executor is redelivered by the broker
itself, as shards are).
"""

from __future__ import annotations

import logging
import os
import socket
import time

from celery import Celery

from dscbatch.core.celery_app import enqueue_verifications, executor_queue, make_app, require_json_only, serve
from dscbatch.core.heartbeat_loop import HEARTBEAT_TTL_SECONDS, HeartbeatLoop
from dscbatch.core.settings import Settings
from dscbatch.executor.curate_tasks import register_curate_tasks
from dscbatch.executor.languages import LANGUAGES, PYTHON
from dscbatch.executor.languages import language as find_language
from dscbatch.executor.observer import ExecutorObserver
from dscbatch.executor.sandbox import Sandbox
from dscbatch.executor.tasks import Verifier, register_tasks
from dscbatch.executor.toolchain import Resources, Toolchains
from dscbatch.jobs.store import JobStore, StoreUnavailable

log = logging.getLogger(__name__)


class Sweeper(HeartbeatLoop):
    unavailable = (StoreUnavailable,)

    def __init__(self, store: JobStore, app: Celery, hostname: str, stale_seconds: float,
                 observer: ExecutorObserver) -> None:
        super().__init__(name="dscbatch-sweeper", what="executor heartbeat")
        self.store = store
        self.app = app
        self.hostname = hostname
        self.stale_seconds = stale_seconds
        self.observer = observer

    def beat(self) -> None:
        self.store.beat_executor(self.hostname, {"pid": os.getpid(), "seen": time.time()}, ttl=HEARTBEAT_TTL_SECONDS)
        self.observer.heartbeat(HEARTBEAT_TTL_SECONDS)

    def upkeep(self) -> None:
        self.sweep()

    def sweep(self) -> int:
        stale = self.store.take_stale_verifications(self.stale_seconds)
        for job_id, index in stale:
            log.warning("%s/%d waited %.0f s for a verdict; queueing it again", job_id, index, self.stale_seconds)
            enqueue_verifications(self.app, self.store.prefix, job_id, [index])
        return len(stale)


def run_executor(settings: Settings, observer: ExecutorObserver | None = None, loglevel: str = "INFO") -> int:
    """Serve until Celery stops (SIGTERM, or an unrecoverable error); returns Celery's exit status."""
    observer = observer or ExecutorObserver()
    sandbox = Sandbox.from_settings(settings)
    sandbox.check()  # refuse to serve where the sandbox does not work
    toolchains = Toolchains(sandbox, Resources.from_settings(settings))
    wanted = [find_language(code) for code in settings.executor_languages.split(",") if code.strip()]
    languages, missing = toolchains.runnable(list({lang.code: lang for lang in [PYTHON, *wanted]}.values()) if wanted
                                             else list(LANGUAGES.values()))
    for code, reason in missing.items():
        log.warning("%s does not run here (its trivial program: %s); not serving its queue", code, reason)
    for code, reason in toolchains.missing_resources(languages).items():
        log.warning("%s runs here with %s", code, reason)
    app = make_app(settings)
    require_json_only(app)
    store = JobStore.connect(settings)
    hostname = f"executor@{socket.gethostname()}-{os.getpid()}"
    concurrency = settings.executor_concurrency or os.cpu_count() or 1
    queues = [executor_queue(settings.key_prefix, language.code) for language in languages]
    log.info("executor serving %s with %d sandboxes at once (Redis %s)", ", ".join(queues), concurrency,
             settings.redacted_redis_url)
    register_tasks(app, Verifier(store, toolchains, observer, [language.code for language in languages], app))
    register_curate_tasks(app)
    sweeper = Sweeper(store, app, hostname, settings.visibility_timeout, observer)
    sweeper.start()
    try:
        return serve(app, hostname, queues, concurrency, loglevel)
    finally:
        sweeper.stop()

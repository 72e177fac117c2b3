"""The Celery runtime every process shares: the app (Redis broker, JSON only, late acks), its task and queue
names, and how shards and verifications are queued.

There is no result backend: results go to the job store in Redis, exactly once per item.
"""

from __future__ import annotations

import contextlib
import faulthandler
import signal
import ssl
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from celery import Celery, signals

from dscbatch.core.errors import SettingsError
from dscbatch.core.keys import Keys
from dscbatch.core.settings import Settings

RUN_SHARD = "dscbatch.run_shard"
VERIFY = "dscbatch.verify"
RENDER_RANGE = "dscbatch.render_range"
# TLS options a rediss:// URL may carry in its query, e.g. ?ssl_ca_certs=/etc/dscbatch/ca.crt
TLS_OPTIONS = frozenset({"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"})
TLS_CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
# Message header: when the shard was queued (Unix seconds); the exporter reports the oldest pending one's age.
ENQUEUED_HEADER = "dscbatch_enqueued"
# File descriptor 2: Celery replaces sys.stderr with a logging proxy that has none.
STDERR = 2


def make_app(settings: Settings) -> Celery:
    app = Celery("dscbatch", broker=settings.redis_url, set_as_current=False)
    url = urlsplit(settings.redis_url)
    if url.scheme == "rediss":
        # kombu wants TLS options as a dict: take them from the URL's query (as redis-py does), and verify
        # the server's certificate unless the URL says otherwise.
        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        options.update((key, value) for key, value in parse_qsl(url.query) if key in TLS_OPTIONS)
        if isinstance(options["ssl_cert_reqs"], str):
            options["ssl_cert_reqs"] = TLS_CERT_REQS[options["ssl_cert_reqs"]]
        app.conf.broker_use_ssl = options
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        event_serializer="json",
        task_ignore_result=True,
        # A shard is acknowledged only after its results are stored; a worker that dies mid-shard leaves it
        # unacknowledged, and Redis hands it out again after the visibility timeout.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A shard that fails unexpectedly stays unacknowledged and comes back, rather than being dropped.
        task_acks_on_failure_or_timeout=False,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # Look for expired unacknowledged shards every few seconds (kombu's default is about 100 s).
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 10)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        # Celery's consumer, reconnecting after a lost broker (core/consumer.py); imported by workers only.
        worker_consumer="dscbatch.core.consumer:Consumer",
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


def require_json_only(app: Celery) -> None:
    """Refuse to run a worker that would deserialize pickle (it executes code from the queue)."""
    accepted = {str(kind).lower() for kind in app.conf.accept_content}
    unsafe = {kind for kind in accepted if "pickle" in kind or "yaml" in kind}
    if unsafe or app.conf.task_serializer != "json":
        raise SettingsError(f"refusing to start: the worker would accept {', '.join(sorted(unsafe or accepted))} "
                            "messages; only json is safe")


def serve(app: Celery, hostname: str, queue: str | list[str], concurrency: int, loglevel: str) -> int:
    """Consume ``queue`` (or each of a list) with ``concurrency`` threads until Celery stops (SIGTERM, or an
    unrecoverable error); returns Celery's exit status."""
    worker = app.Worker(hostname=hostname, pool_cls="threads", concurrency=concurrency,
                        queues=[queue] if isinstance(queue, str) else queue,
                        loglevel=loglevel, without_gossip=True, without_mingle=True, optimization="fair")
    # `kill -USR1 PID` writes every thread's stack to stderr from the signal itself; Celery's own handler for it
    # (set as the worker starts, replaced once it is ready) waits for the main thread, which may be the stuck one.
    signals.worker_ready.connect(lambda **_: faulthandler.register(signal.SIGUSR1, file=STDERR,
                                                                   all_threads=True), weak=False)
    worker.start()
    return int(worker.exitcode or 0)


def enqueue_shard(app: Celery, queue: str, job_id: str, shard_key: str, **options: Any) -> None:
    app.send_task(RUN_SHARD, args=[job_id, shard_key], queue=queue, headers={ENQUEUED_HEADER: time.time()},
                  **options)


def render_queue(queue: str) -> str:
    """The queue of render tasks for the model served on ``queue``: its workers serve both."""
    return f"{queue}.render"


def enqueue_render(app: Celery, queue: str, job_id: str, number: int, first_line: int, first_index: int) -> None:
    """Queue range ``number`` of a job rendered on the cluster: counted when ``first_line`` is 0, its partition
    ``number`` merged when it is -1 (``jobs.store.ranges.MERGE``), else rendered with its lines numbered from
    ``first_line`` and its items from ``first_index``."""
    app.send_task(RENDER_RANGE, args=[job_id, number, first_line, first_index], queue=render_queue(queue),
                  headers={ENQUEUED_HEADER: time.time()})


class ShardQueue:
    """``enqueue(queue, job id, shard key)`` over one connection for all the shards of a submission, and how many
    of a queue's messages wait for a worker (``waiting``)."""

    def __init__(self, app: Celery, producer: Any) -> None:
        self.app = app
        self.producer = producer

    def __call__(self, queue: str, job_id: str, shard_key: str) -> None:
        enqueue_shard(self.app, queue, job_id, shard_key, producer=self.producer)

    def waiting(self, queue: str) -> int:
        """The messages on ``queue`` that no worker has taken (kombu's count over its priority lists)."""
        return int(self.producer.channel.queue_declare(queue=queue).message_count)


@contextlib.contextmanager
def shard_enqueuer(app: Celery) -> Iterator[ShardQueue]:
    """A ``ShardQueue`` that sends every shard of a submission over one connection."""
    with app.producer_pool.acquire(block=True) as producer:
        yield ShardQueue(app, producer)


def executor_queue(prefix: str, language: str = "python") -> str:
    """The executor pool's queue: ``PREFIX.executor``, which every executor serves (workers queue every
    verification there; Python runs everywhere), and ``PREFIX.executor.LANG`` for another language, served by
    the executors whose start-up check ran that language (the model queues are ``PREFIX.MODEL``)."""
    return Keys(prefix).queue("executor" if language == "python" else f"executor.{language}")


def enqueue_verifications(app: Celery, prefix: str, job_id: str, indices: Sequence[int], language: str = "python",
                          **options: Any) -> None:
    for index in indices:
        app.send_task(VERIFY, args=[job_id, index], queue=executor_queue(prefix, language),
                      headers={ENQUEUED_HEADER: time.time()}, **options)

"""``dscbatch executor --metrics-port N``: the executor's metrics and ``/healthz``.

``dscbatch_executor_executions_total{language,verdict}`` counts programs run in the sandbox by language and by
how they ended (its rate is the executions per second), ``dscbatch_executor_sandbox_duration_seconds`` is how
long each took (bwrap's start, and a compiled language's compilation, included). Every verdict's series exists
from the start at 0 for Python (another language's appear with its first program), so that an alert on sandbox
errors sees the first one as an increase.
"""

from __future__ import annotations

import math
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from dscbatch.core.celery_app import executor_queue
from dscbatch.core.settings import Settings
from dscbatch.executor.observer import ExecutorObserver
from dscbatch.executor.sandbox import VERDICTS, Verdict
from dscbatch.monitoring.server import MetricsServer

# HumanEval's programs take tens of milliseconds; the default sandbox limit is 10 s.
SANDBOX_SECONDS_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, math.inf)


class ExecutorMetrics(ExecutorObserver):
    def __init__(self, queue: str) -> None:
        self.labels = {"queue": queue}
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._executions = Counter("dscbatch_executor_executions", "Programs run in the sandbox, by language and "
                                   "verdict.", ["queue", "language", "verdict"], registry=self.registry)
        self.executions = {verdict: self._executions.labels(queue=queue, language="python", verdict=verdict)
                           for verdict in VERDICTS}
        self.seconds = Histogram("dscbatch_executor_sandbox_duration_seconds",
                                 "Wall time of one sandboxed program, bwrap's start included.", ["queue"],
                                 buckets=SANDBOX_SECONDS_BUCKETS, registry=self.registry).labels(queue=queue)
        self.last_heartbeat = Gauge("dscbatch_executor_heartbeat_timestamp_seconds",
                                    "When the executor last told Redis it is alive (Unix time).", ["queue"],
                                    registry=self.registry)
        self._alive_until = -math.inf

    def is_alive(self) -> bool:
        return time.monotonic() < self._alive_until

    def heartbeat(self, ttl: float) -> None:
        self._alive_until = time.monotonic() + ttl
        self.last_heartbeat.labels(**self.labels).set_to_current_time()

    def executed(self, verdict: Verdict, language: str = "python") -> None:
        self._executions.labels(queue=self.labels["queue"], language=language, verdict=verdict.status).inc()
        self.seconds.observe(verdict.seconds)


def serve_executor_metrics(port: int, settings: Settings) -> ExecutorMetrics:
    """Start the executor's metrics endpoint on ``port``; pass the result to ``run_executor``."""
    metrics = ExecutorMetrics(executor_queue(settings.key_prefix))
    MetricsServer(port, metrics.registry, metrics.is_alive).start()
    return metrics

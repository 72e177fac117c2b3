"""``dscbatch worker --metrics-port N``: the worker's own metrics, vLLM's engine metrics and ``/healthz``.

Every series carries the worker's ``model`` and ``queue`` labels; the per-job counters also ``job_id`` (for
the worker's most recent jobs, see job_counters.py). The registry is the worker's own, not the global one,
which holds vLLM's metrics under their original names (vllm_metrics.py re-exports them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from dscbatch.core.settings import Settings
from dscbatch.jobs.submission import queue_name
from dscbatch.jobs.tokenizer import model_name
from dscbatch.monitoring.job_counters import JobCounters
from dscbatch.monitoring.server import MetricsServer
from dscbatch.monitoring.vllm_metrics import VllmMetrics
from dscbatch.workers.engine import EngineResult
from dscbatch.workers.observer import WorkerObserver

# Jobs whose per-job series a worker keeps: more than run at once on one queue in practice.
RECENT_JOBS = 10
# A shard of 256 requests takes seconds on a small model and up to tens of minutes with long outputs.
SHARD_SECONDS_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, math.inf)
SHARD_ITEMS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, math.inf)


class WorkerMetrics(WorkerObserver):
    def __init__(self, model: str, queue: str) -> None:
        self.labels = {"model": model, "queue": queue}
        names = list(self.labels)
        self.registry = CollectorRegistry()
        self.jobs = JobCounters(self.labels, RECENT_JOBS)
        self.registry.register(self.jobs)
        self.registry.register(VllmMetrics(self.labels))
        ProcessCollector(registry=self.registry)
        self.shard_seconds = Histogram(
            "dscbatch_worker_shard_duration_seconds", "Time from taking a shard to storing its results.", names,
            buckets=SHARD_SECONDS_BUCKETS, registry=self.registry).labels(**self.labels)
        self.shard_items = Histogram(
            "dscbatch_worker_shard_items", "Items per shard served (those already settled included).", names,
            buckets=SHARD_ITEMS_BUCKETS, registry=self.registry).labels(**self.labels)
        self.running = Gauge("dscbatch_worker_running_requests", "Requests handed to the engine and not finished.",
                             names, registry=self.registry).labels(**self.labels)
        # The next two have no series until they have a value: a heartbeat of 0 would read as long dead.
        self.engine_start = Gauge("dscbatch_worker_engine_start_duration_seconds",
                                  "How long the vLLM engine took to start.", names, registry=self.registry)
        self.last_heartbeat = Gauge("dscbatch_worker_heartbeat_timestamp_seconds",
                                    "When the worker last told Redis it is alive (Unix time).", names,
                                    registry=self.registry)
        self.storage_retries = Counter(
            "dscbatch_worker_storage_retries_total", "Work-folder operations (shard payloads, result parts) that "
            "failed and were tried again after a backoff.", [*names, "action"], registry=self.registry)
        self._alive_until = -math.inf  # time.monotonic() until which the last heartbeat holds

    def is_alive(self) -> bool:
        """Whether the worker's heartbeat in Redis is fresh (what ``/healthz`` answers)."""
        return time.monotonic() < self._alive_until

    def engine_started(self, seconds: float) -> None:
        self.engine_start.labels(**self.labels).set(seconds)

    def heartbeat(self, ttl: float) -> None:
        self._alive_until = time.monotonic() + ttl
        self.last_heartbeat.labels(**self.labels).set_to_current_time()

    def storage_retried(self, action: str) -> None:
        self.storage_retries.labels(**self.labels, action=action).inc()

    def shard_started(self, job_id: str, requests: int) -> None:
        self.running.set(requests)

    def shard_finished(self, job_id: str, results: Sequence[EngineResult], skipped: int, seconds: float) -> None:
        self.running.set(0)
        self.jobs.add(job_id, results, skipped)
        self.shard_seconds.observe(seconds)
        self.shard_items.observe(len(results) + skipped)


def serve_worker_metrics(port: int, settings: Settings, model: str) -> WorkerMetrics:
    """Start the worker's metrics endpoint on ``port``; pass the result to ``run_worker`` as its observer."""
    metrics = WorkerMetrics(model_name(model), queue_name(settings.key_prefix, model))
    MetricsServer(port, metrics.registry, metrics.is_alive).start()
    return metrics

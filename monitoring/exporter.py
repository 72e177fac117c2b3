"""``dscbatch exporter --port N``: the cluster as Redis sees it, read afresh at every scrape.

Queues (shards waiting and delivered, requests pending, the oldest waiting shard's age), jobs by state,
per-job item counts and the workers whose heartbeat is alive. Per-job series are bounded: every unfinished
job plus the ``recent_jobs`` that finished last. Run one exporter per Redis; it holds no state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from dscbatch.jobs.store import JOB_STATES, JobStatus, JobStore
from dscbatch.monitoring.broker_queues import read_queues
from dscbatch.monitoring.server import MetricsServer

UNFINISHED = ("submitting", "queued", "running")


def shown_jobs(jobs: list[JobStatus], recent: int) -> list[JobStatus]:
    """Every unfinished job, and the ``recent`` jobs that finished last."""
    finished = sorted((job for job in jobs if job.state not in UNFINISHED),
                      key=lambda job: job.finished or job.created, reverse=True)
    return [job for job in jobs if job.state in UNFINISHED] + finished[:recent]


class ClusterCollector:
    def __init__(self, store: JobStore, recent_jobs: int) -> None:
        self.store = store
        self.recent_jobs = recent_jobs

    def _model(self, queue: str) -> str:
        return queue.removeprefix(self.store.keys.queues_prefix)

    def collect(self) -> Iterator[Metric]:
        jobs = self.store.statuses(self.store.job_ids())
        workers = self.store.workers()
        queues = sorted({job.queue for job in jobs} | {str(info["queue"]) for info in workers.values()})
        yield from self._queues(queues, jobs)
        yield from self._jobs(jobs)
        yield from self._workers(queues, workers)

    def _queues(self, queues: list[str], jobs: list[JobStatus]) -> Iterator[Metric]:
        depths = read_queues(self.store, queues)
        pending = Counter[str]()
        for job in jobs:
            if job.state in UNFINISHED:
                pending[job.queue] += job.pending
        labels = ["queue", "model"]
        families = {
            "pending_shards": GaugeMetricFamily("dscbatch_queue_pending_shards",
                                                "Shards waiting in the queue for a worker.", labels=labels),
            "unacked_shards": GaugeMetricFamily("dscbatch_queue_unacked_shards",
                                                "Shards delivered to a worker and not acknowledged yet: running, "
                                                "or waiting for the visibility timeout after their worker died.",
                                                labels=labels),
            "pending_requests": GaugeMetricFamily("dscbatch_queue_pending_requests",
                                                  "Requests of the queue's unfinished jobs without a result yet.",
                                                  labels=labels),
            "age": GaugeMetricFamily("dscbatch_queue_oldest_pending_age_seconds",
                                     "How long the oldest waiting shard has been queued; 0 when none waits.",
                                     labels=labels),
        }
        for queue in queues:
            values = [queue, self._model(queue)]
            depth = depths[queue]
            families["pending_shards"].add_metric(values, depth.pending)
            families["unacked_shards"].add_metric(values, depth.unacked)
            families["pending_requests"].add_metric(values, pending[queue])
            families["age"].add_metric(values, depth.oldest_age)
        yield from families.values()

    def _jobs(self, jobs: list[JobStatus]) -> Iterator[Metric]:
        by_state = GaugeMetricFamily("dscbatch_jobs", "Jobs in Redis by state.", labels=["state"])
        states = Counter(job.state for job in jobs)
        for state in JOB_STATES:
            by_state.add_metric([state], states[state])
        yield by_state
        items = GaugeMetricFamily("dscbatch_job_items", "A job's items by status: done, failed or pending (no "
                                  "result yet); their sum is the job's size. Unfinished and recent jobs only.",
                                  labels=["job_id", "model", "status"])
        folded = GaugeMetricFamily("dscbatch_job_deduplicated_items", "A job's items answered by an identical "
                                   "deterministic request's run instead of their own. Unfinished and recent jobs "
                                   "only.", labels=["job_id", "model"])
        info = GaugeMetricFamily("dscbatch_job_info", "A job's state, as a label (the value is 1). Unfinished and "
                                 "recent jobs only.", labels=["job_id", "model", "state"])
        for job in shown_jobs(jobs, self.recent_jobs):
            for status, count in (("done", job.done), ("failed", job.failed), ("pending", job.pending)):
                items.add_metric([job.id, job.model, status], count)
            folded.add_metric([job.id, job.model], job.deduplicated)
            info.add_metric([job.id, job.model, job.state], 1)
        yield items
        yield folded
        yield info

    def _workers(self, queues: list[str], workers: dict[str, dict[str, Any]]) -> Iterator[Metric]:
        alive = GaugeMetricFamily("dscbatch_workers_alive", "Workers whose heartbeat in Redis has not expired.",
                                  labels=["queue", "model"])
        info = GaugeMetricFamily("dscbatch_worker_alive_info", "A worker whose heartbeat has not expired (the value "
                                 "is 1).", labels=["worker", "queue", "model"])
        counts = Counter(str(worker["queue"]) for worker in workers.values())
        for queue in queues:
            alive.add_metric([queue, self._model(queue)], counts[queue])
        for name, worker in sorted(workers.items()):
            queue = str(worker["queue"])
            info.add_metric([name, queue, self._model(queue)], 1)
        yield alive
        yield info


def _redis_answers(store: JobStore) -> bool:
    return store.answers()


def run_exporter(store: JobStore, port: int, recent_jobs: int) -> None:
    """Serve the cluster view on ``port`` until interrupted; ``/healthz`` says whether Redis answers."""
    registry = CollectorRegistry()
    registry.register(ClusterCollector(store, recent_jobs))
    MetricsServer(port, registry, lambda: _redis_answers(store)).serve_forever()

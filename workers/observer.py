"""Hooks a worker calls as it works, for what watches it (Prometheus metrics: monitoring/worker_metrics.py).

The base class does nothing, so a worker runs the same with or without an observer; subclasses override the
hooks they need. Hooks run on the worker's threads and must return quickly.
"""

from __future__ import annotations

from collections.abc import Sequence

from dscbatch.workers.engine import EngineResult


class WorkerObserver:
    def engine_started(self, seconds: float) -> None:
        """The engine took ``seconds`` to start and serves requests from now on."""

    def heartbeat(self, ttl: float) -> None:
        """The worker told Redis it is alive for the next ``ttl`` seconds (called on the heartbeat thread)."""

    def shard_started(self, job_id: str, requests: int) -> None:
        """``requests`` of a shard of ``job_id`` go to the engine now (items already settled are left out)."""

    def shard_finished(self, job_id: str, results: Sequence[EngineResult], skipped: int, seconds: float) -> None:
        """A shard's ``results`` were stored, ``skipped`` of its items already had one; it took ``seconds``."""

    def storage_retried(self, action: str) -> None:
        """A ``write``, ``read`` or ``delete`` in the job work folder failed and is tried again after a backoff."""

"""Hooks the executor calls as it judges samples, for what watches it (monitoring/executor_metrics.py).

The base class does nothing; hooks run on the executor's threads and must return quickly.
"""

from __future__ import annotations

from dscbatch.executor.sandbox import Verdict


class ExecutorObserver:
    def heartbeat(self, ttl: float) -> None:
        """The executor told Redis it is alive for the next ``ttl`` seconds."""

    def executed(self, verdict: Verdict, language: str = "python") -> None:
        """One program in ``language`` ran in the sandbox and ended with ``verdict``."""

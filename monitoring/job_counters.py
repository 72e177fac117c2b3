"""A worker's per-job counters (items by outcome, errors by code, tokens), kept for its most recent jobs only.

A worker serves job after job for weeks; a ``job_id`` label on ordinary counters would grow without end. This
collector keeps the jobs it counted last (``keep`` of them) and drops older ones: their series end, which
Prometheus reads as a finished series, and ``rate()`` over the ones still running is unaffected.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from dscbatch.workers.engine import EngineResult

OUTCOMES = ("done", "failed", "skipped")
TOKENS = {  # dscbatch_worker_<kind>_tokens_total
    "prompt": "Prompt tokens of done items.",
    "generated": "Tokens generated for done items (all n completions).",
    "cached_prompt": "Prompt tokens of done items that vLLM found in its prefix cache.",
}


@dataclass
class JobCounts:
    items: Counter[str] = field(default_factory=Counter)  # by outcome
    errors: Counter[str] = field(default_factory=Counter)  # by error code
    tokens: Counter[str] = field(default_factory=Counter)  # by kind, as in TOKENS

    def add(self, results: Sequence[EngineResult], skipped: int) -> None:
        self.items["skipped"] += skipped
        for result in results:
            if result.error is not None:
                self.items["failed"] += 1
                self.errors[result.error.code] += 1
                continue
            self.items["done"] += 1
            self.tokens["prompt"] += result.prompt_tokens
            self.tokens["cached_prompt"] += result.cached_prompt_tokens
            self.tokens["generated"] += sum(len(output.token_ids) for output in result.outputs)


class JobCounters:
    """A collector of ``dscbatch_worker_{items,item_errors,*_tokens}_total`` with a ``job_id`` label."""

    def __init__(self, labels: Mapping[str, str], keep: int) -> None:
        self.labels = dict(labels)
        self.keep = keep
        self._jobs: OrderedDict[str, JobCounts] = OrderedDict()
        self._lock = threading.Lock()  # shards are counted on the worker's thread, scrapes on the server's

    def add(self, job_id: str, results: Sequence[EngineResult], skipped: int) -> None:
        with self._lock:
            counts = self._jobs.pop(job_id, None) or JobCounts()
            counts.add(results, skipped)
            self._jobs[job_id] = counts
            while len(self._jobs) > self.keep:
                self._jobs.popitem(last=False)

    def collect(self) -> Iterator[Metric]:
        names = [*self.labels, "job_id"]
        items = CounterMetricFamily("dscbatch_worker_items", "Items this worker served, by outcome: done, failed "
                                    "(see item_errors) or skipped (already had a result: a redelivered shard).",
                                    labels=[*names, "outcome"])
        errors = CounterMetricFamily("dscbatch_worker_item_errors", "Items that failed in this worker, by error code.",
                                     labels=[*names, "code"])
        tokens = {kind: CounterMetricFamily(f"dscbatch_worker_{kind}_tokens", text, labels=names)
                  for kind, text in TOKENS.items()}
        with self._lock:
            for job_id, counts in self._jobs.items():
                values = [*self.labels.values(), job_id]
                for outcome in OUTCOMES:
                    items.add_metric([*values, outcome], counts.items[outcome])
                for code, count in sorted(counts.errors.items()):
                    errors.add_metric([*values, code], count)
                for kind, family in tokens.items():
                    family.add_metric(values, counts.tokens[kind])
        yield items
        yield errors
        yield from tokens.values()

"""vLLM's own engine metrics, re-exported from the worker's endpoint under conventional Prometheus names.

``vllm.LLM`` records them (with stats logging on) in prometheus_client's global registry, in this process.
Their names start ``vllm:``, and a colon is reserved for recording rules (``promtool check metrics`` refuses
it), so ``vllm:x`` is served as ``vllm_x``; the two that break the naming conventions get names that don't.
vLLM's ``model_name`` label (the model's path) becomes the worker's ``model`` and ``queue`` labels.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

VLLM_PREFIX = "vllm:"
RENAMED = {
    "vllm:kv_cache_usage_perc": "vllm_kv_cache_usage_ratio",  # a fraction of 1, not a percentage
    "vllm:iteration_tokens_total": "vllm_iteration_tokens",  # a histogram: _total is for counters
}


def exported_name(name: str) -> str:
    return RENAMED.get(name) or "vllm_" + name.removeprefix(VLLM_PREFIX)


class VllmMetrics:
    """A collector: every ``vllm:*`` family of the global registry, renamed and relabelled, at each scrape."""

    def __init__(self, labels: Mapping[str, str]) -> None:
        self.labels = dict(labels)

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            if not family.name.startswith(VLLM_PREFIX):
                continue
            name = exported_name(family.name)
            renamed = Metric(name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labels = {key: value for key, value in sample.labels.items() if key != "model_name"}
                renamed.samples.append(sample._replace(name=name + sample.name.removeprefix(family.name),
                                                       labels={**labels, **self.labels}))
            yield renamed

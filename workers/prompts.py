"""Items of several prompts (an OpenAI completions body's ``prompt`` list): one engine request per prompt, and one
result for the item once every prompt of it has its own.

The item's result holds each prompt's outputs in prompt order, so choice ``p * n + k`` is prompt ``p``'s ``k``-th
sample, as OpenAI and vLLM's OpenAI server number them; its prompt and cached tokens are the prompts' sums, and
the first error among them fails the whole item: a line is one result, whole or failed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from dscbatch.jobs.requests import Params
from dscbatch.workers.engine import EngineRequest, EngineResult

# An item of several prompts sends each as an engine request keyed by the item's key, this and its number.
PART = ":"


def engine_requests(key: str, item: dict[str, Any], stop_token_ids: list[int]) -> list[EngineRequest]:
    """The engine requests that answer a shard item: one, or one per prompt of its line."""
    params = Params.model_validate(item["params"])
    if "more" not in item:
        return [EngineRequest(key, item["ids"], params, stop_token_ids)]
    return [EngineRequest(f"{key}{PART}{number}", ids, params, stop_token_ids)
            for number, ids in enumerate([item["ids"], *item["more"]])]


def item_key(request_key: str) -> str:
    """The key of the item an engine request answers (part of)."""
    return request_key.partition(PART)[0]


class Gather:
    """Engine results in, items' results out: an item's once each of its engine requests has its result."""

    def __init__(self, requests: Sequence[EngineRequest]) -> None:
        self._parts = Counter(item_key(request.key) for request in requests)
        self._held: dict[str, dict[str, EngineResult]] = {}

    def add(self, result: EngineResult) -> EngineResult | None:
        key = item_key(result.key)
        if key == result.key:
            return result
        held = self._held.setdefault(key, {})
        held[result.key] = result
        if len(held) < self._parts[key]:
            return None
        del self._held[key]
        parts = [held[f"{key}{PART}{number}"] for number in range(len(held))]
        error = next((part.error for part in parts if part.error is not None), None)
        return EngineResult(key, [] if error else [output for part in parts for output in part.outputs],
                            sum(part.prompt_tokens for part in parts),
                            sum(part.cached_prompt_tokens for part in parts), error)

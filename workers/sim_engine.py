"""A SIMULATED engine, for control-plane scale work only (``dscbatch worker --engine sim``): no model runs.

It serves the interface the worker drives (``add``, ``step``, ``abort``, ``alive``, ``close``, ``max_num_seqs``)
with the timing of a GPU serving a 6.7B model, so that Redis, Celery, the object store and the worker's own Python
around the engine can be measured at the rate a GPU pool produces results (``benchmarks/scale.py``), on machines
without one. What it generates is not a model's output: each request gets ``max_tokens`` deterministic token ids
(a function of its prompt, its seed and the position), decoded with the model's real tokenizer as vLLM's output
is, and finishes with ``length``. Every test of generation itself runs on real vLLM.

Its profile (``SimProfile``) is shaped like vLLM on one H200 serving DeepSeek Coder 6.7B in bf16: up to 256
sequences at once, a decode step of about 30 ms with a full batch, prefill at about 25,000 prompt tokens/s with
at most 8,192 prompt tokens per step (chunked prefill). Steps sleep for their time: the worker's CPU is free for
its own work meanwhile, as it is beside a GPU.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass

from dscbatch.core.errors import RequestError
from dscbatch.jobs.requests import DEFAULT_PARAMS
from dscbatch.jobs.tokenizer import ModelTokenizer, resolve_model_dir
from dscbatch.workers.engine import Completion, EngineRequest, EngineResult

SIM = "sim"


@dataclass(frozen=True)
class SimProfile:
    max_num_seqs: int = 256
    max_model_len: int = 16384
    decode_step_seconds: float = 0.030
    prefill_tokens_per_second: float = 25_000.0
    prefill_tokens_per_step: int = 8192


@dataclass
class _Sequence:
    request: EngineRequest
    max_tokens: int
    n: int
    prefill_left: int
    generated: int = 0


class SimulatedEngine:
    """Not a model: see the module's docstring. Not thread-safe: one thread drives it, as the real one."""

    def __init__(self, model: str, profile: SimProfile = SimProfile()) -> None:
        self.tokenizer = ModelTokenizer(resolve_model_dir(model))
        self.profile = profile
        self.max_num_seqs = profile.max_num_seqs
        self.max_model_len = profile.max_model_len
        self.vocab_size = len(self.tokenizer.vocab)
        self._numbers = itertools.count()
        self._running: dict[str, _Sequence] = {}  # in the batch
        self._waiting: dict[str, _Sequence] = {}  # queued beyond max_num_seqs, as vLLM queues them

    def add(self, request: EngineRequest) -> tuple[str, EngineResult | None]:
        engine_id = f"{request.key}#{next(self._numbers)}"
        if not request.prompt_token_ids:
            return engine_id, EngineResult.failed(request, RequestError("invalid_request", "the prompt is empty"))
        if len(request.prompt_token_ids) >= self.max_model_len:
            return engine_id, EngineResult.failed(request, RequestError(
                "prompt_too_long", f"the prompt has {len(request.prompt_token_ids)} tokens; the model's context is "
                                   f"{self.max_model_len}, and at least one must be generated"))
        params = request.params.over(DEFAULT_PARAMS)
        self._waiting[engine_id] = _Sequence(request, int(params.max_tokens or 1), int(params.n or 1),
                                             len(request.prompt_token_ids))
        return engine_id, None

    def step(self) -> list[tuple[str, EngineResult]]:
        while self._waiting and len(self._running) < self.max_num_seqs:
            engine_id = next(iter(self._waiting))
            self._running[engine_id] = self._waiting.pop(engine_id)
        budget = self.profile.prefill_tokens_per_step
        prefilled = 0
        finished = []
        for engine_id, sequence in list(self._running.items()):
            if sequence.prefill_left:
                chunk = min(sequence.prefill_left, budget - prefilled)
                sequence.prefill_left -= chunk
                prefilled += chunk
                continue
            sequence.generated += 1
            if sequence.generated >= sequence.max_tokens:
                del self._running[engine_id]
                finished.append((engine_id, self._result(sequence)))
        decoding = len(self._running) + len(finished)
        seconds = prefilled / self.profile.prefill_tokens_per_second
        if decoding:
            seconds += self.profile.decode_step_seconds * max(0.25, decoding / self.max_num_seqs)
        time.sleep(seconds)
        return finished

    def _result(self, sequence: _Sequence) -> EngineResult:
        request = sequence.request
        seed = hashlib.blake2b(repr((request.prompt_token_ids, request.params.seed)).encode(), digest_size=8).digest()
        start = int.from_bytes(seed, "little")
        outputs = []
        for choice in range(sequence.n):
            ids = [(start + 7919 * (position + choice * 104729)) % self.vocab_size
                   for position in range(sequence.max_tokens)]
            outputs.append(Completion(self.tokenizer.decode(ids), "length", ids))
        return EngineResult(request.key, outputs, len(request.prompt_token_ids), 0, None)

    def abort(self, request_ids: Iterable[str]) -> None:
        for engine_id in request_ids:
            self._running.pop(engine_id, None)
            self._waiting.pop(engine_id, None)

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        self._running.clear()
        self._waiting.clear()

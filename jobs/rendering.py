"""Rendering requests into the exact token ids a model was trained on, with their stop tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dscbatch.core.errors import RequestError
from dscbatch.jobs.repo import repo_context
from dscbatch.jobs.requests import (
    DEFAULT_PARAMS,
    ChatRequest,
    CompletionRequest,
    FimRequest,
    Params,
    RepoRequest,
    Request,
    TokenIdsRequest,
)
from dscbatch.jobs.tokenizer import ModelTokenizer


@dataclass(frozen=True)
class FimFormat:
    """A family's prefix-suffix-middle layout, told apart by its special tokens."""

    family: str
    prefix_token: str
    suffix_token: str
    middle_token: str
    marker: str  # a token only this family has

    def render(self, prefix: str, suffix: str) -> str:
        return f"{self.prefix_token}{prefix}{self.suffix_token}{suffix}{self.middle_token}"


@dataclass(frozen=True)
class CodeLlamaFim(FimFormat):
    def render(self, prefix: str, suffix: str) -> str:
        # Meta's reference infilling prompt puts a space after <PRE> and before <SUF> and <MID>.
        return f"{self.prefix_token} {prefix} {self.suffix_token}{suffix} {self.middle_token}"


FIM_FORMATS = (
    FimFormat("deepseek-coder", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<｜fim▁begin｜>"),
    FimFormat("qwen2.5-coder", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>"),
    FimFormat("codegemma", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_separator|>"),
    FimFormat("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_prefix>"),
    CodeLlamaFim("codellama", "<PRE>", "<SUF>", "<MID>", "▁<PRE>"),
)


def detect_fim_format(tokenizer: ModelTokenizer) -> FimFormat | None:
    """The FIM layout whose special tokens the tokenizer has, or None for a model without FIM."""
    for fmt in FIM_FORMATS:
        if fmt.marker in tokenizer.vocab and (
                fmt.prefix_token in tokenizer.vocab or fmt.marker.startswith("▁")):
            return fmt
    return None


@dataclass(frozen=True)
class RenderedRequest:
    prompt: str
    prompt_token_ids: list[int]
    stop_token_ids: list[int]
    params: Params


class Renderer:
    """Turns requests into prompts for one model, with job defaults applied under each line's params."""

    def __init__(self, tokenizer: ModelTokenizer, defaults: Params = Params(),
                 max_model_len: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.defaults = defaults.over(DEFAULT_PARAMS)
        self.fim = detect_fim_format(tokenizer)
        self.max_model_len = max_model_len or tokenizer.context_length
        self.vocab_size = max(tokenizer.vocab.values()) + 1

    def _fim(self, prefix: str, suffix: str) -> str:
        if self.fim is None:
            raise RequestError("fim_unsupported", "the model's tokenizer has no fill-in-the-middle tokens")
        return self.fim.render(prefix, suffix)

    def text(self, request: Request) -> str:
        """The prompt text before BOS is added (chat: the model's own template, BOS included; token ids: their
        text, special tokens included)."""
        if isinstance(request, CompletionRequest):
            return request.prompt
        if isinstance(request, TokenIdsRequest):
            outside = next((token for token in request.prompt_token_ids if token >= self.vocab_size), None)
            if outside is not None:
                raise RequestError("invalid_request", f"prompt token id {outside} is outside the model's "
                                                      f"vocabulary of {self.vocab_size} tokens")
            return self.tokenizer.decode(request.prompt_token_ids, skip_special_tokens=False)
        if isinstance(request, FimRequest):
            return self._fim(request.prefix, request.suffix)
        if isinstance(request, ChatRequest):
            template = self.tokenizer.chat_template
            if template is None:
                raise RequestError("chat_unsupported", "the model's tokenizer config has no chat template")
            return template.render([message.model_dump() for message in request.messages])
        assert isinstance(request, RepoRequest)
        context = repo_context(request.files, request.target)
        return context if request.target.suffix is None else self._fim(context, request.target.suffix)

    def render(self, request: Request) -> RenderedRequest:
        """Raises RequestError for a request this model cannot serve; it becomes that item's error."""
        text = self.text(request)
        return self._rendered(request, text, self._given_ids(request) or self.tokenizer.encode(text))

    @staticmethod
    def _given_ids(request: Request) -> list[int] | None:
        return request.prompt_token_ids if isinstance(request, TokenIdsRequest) else None

    def render_many(self, requests: Sequence[Request]) -> list[RenderedRequest | RequestError]:
        """``render`` of each request, tokenized in one batch on all cores; a RequestError in place of a
        request this model cannot serve."""
        texts: list[str | RequestError] = []
        for request in requests:
            try:
                texts.append(self.text(request))
            except RequestError as error:
                texts.append(error)
        encoded = iter(self.tokenizer.encode_many([text for request, text in zip(requests, texts, strict=True)
                                                   if isinstance(text, str) and self._given_ids(request) is None]))
        rendered: list[RenderedRequest | RequestError] = []
        for request, text in zip(requests, texts, strict=True):
            if isinstance(text, RequestError):
                rendered.append(text)
                continue
            try:
                rendered.append(self._rendered(request, text, self._given_ids(request) or next(encoded)))
            except RequestError as error:
                rendered.append(error)
        return rendered

    def _rendered(self, request: Request, text: str, encoded: list[int]) -> RenderedRequest:
        params = request.params.over(self.defaults)
        ids = encoded if isinstance(request, TokenIdsRequest) else self.tokenizer.with_bos(encoded)
        prompt = f"{self.tokenizer.bos_text}{text}" if len(ids) > len(encoded) else text
        max_tokens = params.max_tokens or 0
        if len(ids) + max_tokens > self.max_model_len:
            raise RequestError("prompt_too_long", f"the prompt has {len(ids)} tokens and max_tokens is "
                               f"{max_tokens}: {len(ids) + max_tokens} exceeds the model's context of "
                               f"{self.max_model_len} tokens")
        return RenderedRequest(prompt, ids, self.tokenizer.stop_token_ids, params)

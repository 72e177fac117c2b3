"""Rendering requests into the exact token ids a model was trained on, with their stop tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jinja2

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
    # The tokens this family's FIM (and repo-level) answers end with, as its model cards and reference code stop.
    end_tokens: tuple[str, ...]

    def render(self, prefix: str, suffix: str) -> str:
        return f"{self.prefix_token}{prefix}{self.suffix_token}{suffix}{self.middle_token}"


@dataclass(frozen=True)
class CodeLlamaFim(FimFormat):
    def render(self, prefix: str, suffix: str) -> str:
        # Meta's reference infilling prompt puts a space after <PRE> and before <SUF> and <MID>.
        return f"{self.prefix_token} {prefix} {self.suffix_token}{suffix} {self.middle_token}"


FIM_FORMATS = (
    # DeepSeek Coder's FIM is its base models' task: the answer ends with the base models' EOS.
    FimFormat("deepseek-coder", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<｜fim▁begin｜>",
              ("<｜end▁of▁sentence｜>",)),
    # Qwen2.5-Coder's FIM (its base models') ends with <|endoftext|>; Qwen's own examples also stop at the padding
    # and file-separator tokens, which a repo-level answer runs on into.
    FimFormat("qwen2.5-coder", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>",
              ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>")),
    FimFormat("codegemma", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_separator|>",
              ("<|file_separator|>", "<eos>")),
    FimFormat("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_prefix>",
              ("<|endoftext|>", "<file_sep>")),
    CodeLlamaFim("codellama", "<PRE>", "<SUF>", "<MID>", "▁<PRE>", ("▁<EOT>", "</s>")),
)


def detect_fim_format(tokenizer: ModelTokenizer) -> FimFormat | None:
    """The FIM layout whose special tokens the tokenizer has, or None for a model without FIM."""
    for fmt in FIM_FORMATS:
        if fmt.marker in tokenizer.vocab and (
                fmt.prefix_token in tokenizer.vocab or fmt.marker.startswith("▁")):
            return fmt
    return None


def chat_end_token(tokenizer: ModelTokenizer) -> str | None:
    """The special token the chat template closes an assistant turn with (``<|im_end|>``, ``<|EOT|>``)."""
    template = tokenizer.chat_template
    if template is None:
        return None
    mark = "\x00answer\x00"
    try:
        text = template.render([{"role": "user", "content": "q"}, {"role": "assistant", "content": mark}])
    except jinja2.TemplateError:
        return None
    after = text[text.find(mark) + len(mark):] if mark in text else ""
    found = [(after.find(token), token) for token in tokenizer.added_tokens if token in after]
    return min(found)[1] if found else None


def stop_token_ids(tokenizer: ModelTokenizer) -> list[int]:
    """Every token a generation for this model ends at: generation_config's EOS list and the tokenizer's EOS
    (ModelTokenizer.stop_token_ids), the chat template's end-of-turn token, and the end tokens of the model's
    FIM family."""
    fim = detect_fim_format(tokenizer)
    texts = [chat_end_token(tokenizer), *(fim.end_tokens if fim is not None else ())]
    ids = {tokenizer.token_id(text) for text in texts}
    return sorted(set(tokenizer.stop_token_ids) | {token for token in ids if token is not None})


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
        self.stop_token_ids = stop_token_ids(tokenizer)
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
        return RenderedRequest(prompt, ids, self.stop_token_ids, params)

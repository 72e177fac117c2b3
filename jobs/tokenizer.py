"""A model's tokenizer, loaded faithfully with the ``tokenizers`` library, and its chat template.

Prompt ids are always ``Tokenizer.from_file(tokenizer.json).encode(text, add_special_tokens=False)`` plus BOS
where the tokenizer config asks for it: transformers 5 mis-loads byte-level tokenizers that are labelled as
Llama ones (DeepSeek Coder; transformers issue 46489), so nothing here goes through transformers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from dscbatch.core.errors import ModelFilesError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json",
                   "chat_template.jinja", "chat_template.json", "special_tokens_map.json")


def model_name(model: str) -> str:
    """The name a model is known by in queues and metrics: the last part of its path or hub id."""
    return model.rstrip("/").rsplit("/", 1)[-1]


def resolve_model_dir(model: str) -> Path:
    """A local directory with the model's tokenizer files: the path itself, or a hub download of them."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise ModelFilesError(f"{model}: no tokenizer.json in the model directory")
        return path
    if path.exists() or model.count("/") != 1:
        raise ModelFilesError(f"{model}: not a model directory, nor a hub id of the form owner/name")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:
        raise ModelFilesError(f"{model}: not a local directory, and huggingface_hub is not installed") from error
    try:
        return Path(snapshot_download(model, allow_patterns=list(TOKENIZER_FILES)))
    except Exception as error:  # the hub client raises many kinds; all mean "could not fetch"
        raise ModelFilesError(f"{model}: not a local directory, and its tokenizer could not be fetched "
                              f"from the hub ({type(error).__name__})") from error


def read_model_json(path: Path) -> dict[str, Any]:
    """A model file's JSON object; {} when the model has no such file."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelFilesError(f"{path}: unreadable ({error})") from error
    if not isinstance(value, dict):
        raise ModelFilesError(f"{path}: expected a JSON object")
    return value


def _token_text(value: Any) -> str | None:
    """Special tokens appear in configs as plain strings or as AddedToken objects."""
    if isinstance(value, dict):
        content = value.get("content")
        return content if isinstance(content, str) else None
    return value if isinstance(value, str) else None


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@dataclass(frozen=True)
class ChatTemplate:
    """A model's own Jinja chat template, rendered the way transformers renders it."""

    source: str
    special_tokens: dict[str, str]

    @cached_property
    def _template(self) -> jinja2.Template:
        # Same environment as transformers' apply_chat_template, so every official template renders alike.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        return env.from_string(self.source)

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        return self._template.render(messages=list(messages), add_generation_prompt=True, **self.special_tokens)


class ModelTokenizer:
    """Token-exact encoding, decoding and the token-level facts of one model."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        try:
            self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        except Exception as error:  # tokenizers raises a bare Exception on malformed files
            raise ModelFilesError(f"{model_dir / 'tokenizer.json'}: cannot be loaded ({error})") from error
        self.config = read_model_json(model_dir / "tokenizer_config.json")
        self.generation_config = read_model_json(model_dir / "generation_config.json")
        self.model_config = read_model_json(model_dir / "config.json")
        self.vocab: dict[str, int] = self.tokenizer.get_vocab(with_added_tokens=True)

    @classmethod
    def load(cls, model: str) -> ModelTokenizer:
        return cls(resolve_model_dir(model))

    def token_id(self, text: str | None) -> int | None:
        return self.vocab.get(text) if text is not None else None

    @cached_property
    def bos_text(self) -> str | None:
        return _token_text(self.config.get("bos_token"))

    @cached_property
    def bos_id(self) -> int | None:
        return self.token_id(self.bos_text)

    @cached_property
    def adds_bos(self) -> bool:
        """Whether plain prompts start with BOS (``add_bos_token``, which Llama-style configs default to true)."""
        return bool(self.config.get("add_bos_token", False)) and self.bos_id is not None

    @cached_property
    def stop_token_ids(self) -> list[int]:
        """The model's end-of-generation tokens: generation_config's eos ids and the tokenizer's eos token."""
        configured = self.generation_config.get("eos_token_id", self.model_config.get("eos_token_id"))
        ids = configured if isinstance(configured, list) else [configured] if configured is not None else []
        eos = self.token_id(_token_text(self.config.get("eos_token")))
        if eos is not None:
            ids.append(eos)
        return sorted({int(token) for token in ids})

    @cached_property
    def context_length(self) -> int:
        for key in ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions"):
            value = self.model_config.get(key)
            if isinstance(value, int) and value > 0:
                return value
        value = self.config.get("model_max_length")
        return value if isinstance(value, int) and 0 < value < 10**9 else 4096

    @cached_property
    def chat_template(self) -> ChatTemplate | None:
        source = self.config.get("chat_template")
        if (self.model_dir / "chat_template.jinja").is_file():
            source = (self.model_dir / "chat_template.jinja").read_text(encoding="utf-8")
        elif (self.model_dir / "chat_template.json").is_file():
            source = read_model_json(self.model_dir / "chat_template.json").get("chat_template")
        if isinstance(source, list):  # named templates: the one called "default"
            source = next((item.get("template") for item in source if item.get("name") == "default"), None)
        if not isinstance(source, str):
            return None
        special = {name: _token_text(self.config.get(name)) or "" for name in
                   ("bos_token", "eos_token", "pad_token", "unk_token")}
        return ChatTemplate(source, special)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` of each text, on all cores and without the GIL (the tokenizers library's batch encoding;
        its ``fast`` form skips the character offsets, which nothing here reads: about 10 % less work)."""
        return [encoding.ids for encoding in self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def with_bos(self, ids: list[int]) -> list[int]:
        """``ids`` starting with exactly one BOS where the model wants one."""
        if not self.adds_bos or self.bos_id is None:
            return ids
        return ids if ids[:1] == [self.bos_id] else [self.bos_id, *ids]

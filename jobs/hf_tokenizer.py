"""A tokenizer directory that transformers' AutoTokenizer (and so vLLM) loads faithfully.

DeepSeek Coder ships a byte-level BPE ``tokenizer.json`` but labels it ``LlamaTokenizerFast``. Transformers 5
then builds its SentencePiece-style Llama tokenizer (Metaspace decoder) around that vocabulary: spaces and
newlines vanish on encode and decode. For such models :func:`faithful_tokenizer_dir` writes a corrected copy:

- ``tokenizer_class`` becomes ``PreTrainedTokenizerFast`` (``TokenizersBackend`` in transformers 5), which
  uses ``tokenizer.json`` exactly as the ``tokenizers`` library does;
- transformers 5 ignores ``add_bos_token`` whenever a ``tokenizer.json`` exists, so the BOS (or EOS) that the
  config asks for is added to ``tokenizer.json``'s post-processor, as transformers 4's Llama class did.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, processors

from dscbatch.core.errors import ModelFilesError
from dscbatch.jobs.tokenizer import read_model_json

FIXED_CLASS = "PreTrainedTokenizerFast"
# Classes that transformers 5 rebuilds as SentencePiece-style tokenizers, ignoring tokenizer.json's pipeline.
SENTENCEPIECE_CLASSES = frozenset({"LlamaTokenizer", "CodeLlamaTokenizer"})
# The class transformers 5 picks from config.json's model_type when tokenizer_config names none.
SENTENCEPIECE_MODEL_TYPES = frozenset({"llama"})
# Files a tokenizer directory may hold; weights stay behind.
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                "generation_config.json", "config.json", "chat_template.jinja", "chat_template.json")
# Bump when the correction changes, so old cache entries are not reused.
FIX_VERSION = "1"


def _has_byte_level(component: Any) -> bool:
    """Whether a tokenizer.json pipeline component is, or contains, a ByteLevel step."""
    if isinstance(component, dict):
        return component.get("type") == "ByteLevel" or any(_has_byte_level(v) for v in component.values())
    if isinstance(component, list):
        return any(_has_byte_level(v) for v in component)
    return False


def is_mislabelled(model_dir: Path) -> bool:
    """Whether transformers would load ``model_dir``'s byte-level BPE tokenizer as a SentencePiece one."""
    tokenizer = read_model_json(model_dir / "tokenizer.json")
    if tokenizer.get("model", {}).get("type") != "BPE" or not _has_byte_level(tokenizer.get("decoder")):
        return False
    declared = read_model_json(model_dir / "tokenizer_config.json").get("tokenizer_class")
    if isinstance(declared, str):
        return declared.removesuffix("Fast") in SENTENCEPIECE_CLASSES
    return read_model_json(model_dir / "config.json").get("model_type") in SENTENCEPIECE_MODEL_TYPES


def _token_text(value: Any) -> str | None:
    """Special tokens appear in configs as plain strings or as AddedToken objects."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _with_special_tokens(tokenizer_json: str, config: dict[str, Any]) -> str:
    """tokenizer.json's text with a post-processor that adds the BOS/EOS the config asks for."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    single, pair, specials = "$A:0", "$B:1", []
    for flag, key, at_start in (("add_bos_token", "bos_token", True), ("add_eos_token", "eos_token", False)):
        text = _token_text(config.get(key))
        token_id = tokenizer.token_to_id(text) if text is not None and config.get(flag) is True else None
        if text is None or token_id is None:
            continue
        specials.append((text, token_id))
        if at_start:
            single, pair = f"{text}:0 {single}", f"{text}:1 {pair}"
        else:
            single, pair = f"{single} {text}:0", f"{pair} {text}:1"
    if not specials:
        return tokenizer_json
    pair = f"{single} {pair}"
    template = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    current = tokenizer.post_processor
    # Keep the existing step (ByteLevel offset trimming) and add the template after it.
    tokenizer.post_processor = template if current is None else processors.Sequence([current, template])
    data = json.loads(tokenizer_json)
    data["post_processor"] = json.loads(tokenizer.to_str())["post_processor"]
    return json.dumps(data, ensure_ascii=False, indent=2)


def _adds_special_tokens(tokenizer_json: str) -> bool:
    """Whether the post-processor already adds some token to a one-token input (so it needs no fix)."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    return len(tokenizer.encode("a").ids) != len(tokenizer.encode("a", add_special_tokens=False).ids)


def _corrected_files(model_dir: Path) -> dict[str, bytes]:
    files = {name: (model_dir / name).read_bytes() for name in COPIED_FILES if (model_dir / name).is_file()}
    config = read_model_json(model_dir / "tokenizer_config.json")
    config["tokenizer_class"] = FIXED_CLASS
    files["tokenizer_config.json"] = json.dumps(config, ensure_ascii=False, indent=2).encode("utf-8")
    tokenizer_json = files["tokenizer.json"].decode("utf-8")
    if not _adds_special_tokens(tokenizer_json):
        files["tokenizer.json"] = _with_special_tokens(tokenizer_json, config).encode("utf-8")
    return files


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/dscbatch/tokenizers``, by default ``~/.cache/dscbatch/tokenizers``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "dscbatch" / "tokenizers"


def faithful_tokenizer_dir(model_dir: Path, cache_root: Path | None = None) -> Path:
    """``model_dir`` if transformers loads its tokenizer faithfully, else a corrected copy under ``cache_root``."""
    if not is_mislabelled(model_dir):
        return model_dir
    try:
        files = _corrected_files(model_dir)
    except OSError as error:
        raise ModelFilesError(f"{model_dir}: unreadable tokenizer files ({error})") from error
    digest = hashlib.sha256(FIX_VERSION.encode())
    for name in sorted(files):
        digest.update(f"{name}\0{len(files[name])}\0".encode())
        digest.update(files[name])
    root = cache_root if cache_root is not None else default_cache_root()
    target = root / f"{model_dir.name}-{digest.hexdigest()[:16]}"
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename: other processes see no directory or a complete one.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        for name, content in files.items():
            (tmp / name).write_bytes(content)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # losing the race to another writer is fine; anything else is not
                raise
    except OSError as error:
        raise ModelFilesError(f"{target}: cannot write the corrected tokenizer ({error})") from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target

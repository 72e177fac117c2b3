"""Papercuts a new user met: each one fixed, and kept fixed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dscbatch.core.settings import Settings
from dscbatch.jobs.store import JobStore

from .conftest import worker_env
from .test_cli import EXAMPLES, cli


def test_submit_reports_the_lines_read_once_on_a_line_of_its_own(settings: Settings, store: JobStore,
                                                                 deepseek_dir: Path) -> None:
    queue = f"{settings.key_prefix}.{deepseek_dir.name}"
    try:
        result = cli("submit", str(EXAMPLES), "--model", str(deepseek_dir), env=worker_env(settings))
        assert result.returncode == 0, result.stderr
        assert result.stderr.splitlines() == ["read 7 lines"]  # not "read 7 linesread 7 lines"
    finally:
        store.client.delete(queue)


@pytest.mark.engine
@pytest.mark.timeout(600)  # an engine start that fails after profiling: about two minutes on 2 cores
def test_a_worker_whose_engine_cannot_start_names_vllms_reason(settings: Settings, tiny_model: Path) -> None:
    # 4 MiB of KV cache holds about 4k tokens of the tiny model, whose context is 16,384 tokens.
    result = subprocess.run([sys.executable, "-m", "dscbatch.cli.main", "worker", "--model", str(tiny_model),
                             "--engine-arg", "kv_cache_memory_bytes=4194304"], env=worker_env(settings),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the vLLM engine for {tiny_model} failed to start: ValueError: To serve at "
                           "least one request with the model's max seq len ("), last
    assert "the estimated maximum model length is" in last, last

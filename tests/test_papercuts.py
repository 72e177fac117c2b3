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


def _note_then_cancel(settings: Settings, store: JobStore, args: list[str]) -> tuple[int, list[str], str]:
    """Run ``submit ARGS`` under a key prefix no worker serves; once its note is on stderr, cancel its job (the
    one job of the prefix). Its exit status, stderr lines and job id."""
    with subprocess.Popen([sys.executable, "-m", "dscbatch.cli.main", "submit", *args], env=worker_env(settings),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        lines, job_id = [], ""
        try:
            for line in process.stderr:
                lines.append(line.rstrip("\n"))
                if line.startswith("note: "):
                    (job_id,) = store.job_ids()
                    cli("cancel", job_id, env=worker_env(settings))
                    break
            lines.extend(line.rstrip("\n") for line in process.stderr)
            return process.wait(60), lines, job_id
        finally:
            process.kill()


def test_submit_wait_says_when_no_worker_serves_the_jobs_queue(private_settings: Settings, private_store: JobStore,
                                                                deepseek_dir: Path) -> None:
    code, lines, job_id = _note_then_cancel(private_settings, private_store,
                                            [str(EXAMPLES), "--model", str(deepseek_dir), "--wait"])
    queue = f"{private_settings.key_prefix}.{deepseek_dir.name}"
    assert (f"note: no live worker serves its shards ({queue}); they wait on the queue until one starts: "
            f"`dscbatch worker --model {deepseek_dir}` with this DSCBATCH_REDIS_URL and DSCBATCH_KEY_PREFIX") in lines
    assert (code, lines[-1]) == (0, f"job {job_id}: cancelled, 0 done, 0 failed of 7")


def test_submit_render_cluster_says_when_no_worker_serves_its_render_tasks(
        private_settings: Settings, private_store: JobStore, deepseek_dir: Path) -> None:
    code, lines, job_id = _note_then_cancel(private_settings, private_store,
                                            [str(EXAMPLES), "--model", str(deepseek_dir), "--render", "cluster"])
    queue = f"{private_settings.key_prefix}.{deepseek_dir.name}"
    assert (f"note: no live worker serves its render tasks ({queue}.render); they wait on the queue until one "
            f"starts: `dscbatch worker --model {deepseek_dir}` or `dscbatch worker --model {deepseek_dir} "
            "--render-only` with this DSCBATCH_REDIS_URL and DSCBATCH_KEY_PREFIX") in lines
    assert (code, lines[-1]) == (1, f"error: job {job_id} was cancelled while it was submitted: stopped after 0 lines "
                                    "read and 0 shards queued")

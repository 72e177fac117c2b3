"""What every throughput measurement reports, and the engine arguments all systems share."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Pinned for every system: `vllm.LLM` and vLLM's OpenAI frontends (run-batch) default to different batch
# limits (on the CPU 256 sequences / 4096 tokens for LLM, 128 / 2048 for the frontends).
DEFAULT_MAX_NUM_SEQS = 256
DEFAULT_MAX_NUM_BATCHED_TOKENS = 4096
# The tiny model claims 65536 positions, and vLLM refuses a KV cache that cannot hold one such sequence.
DEFAULT_MAX_MODEL_LEN = 4096


@dataclass
class Totals:
    requests: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int | None = 0  # None: the system cannot report it
    generated_tokens: int = 0


Usage = tuple[int, int, int | None]  # prompt, generated and cached prompt tokens (None: not reported)


def read_totals(path: Path, usage_of: Callable[[dict[str, Any]], Usage | None]) -> Totals:
    """Totals over an output file; ``usage_of`` gives a record's usage, or None for a failed request."""
    totals = Totals()
    with path.open(encoding="utf-8") as stream:
        for line in stream:
            totals.requests += 1
            usage = usage_of(json.loads(line))
            if usage is None:
                totals.failed += 1
                continue
            prompt, generated, cached = usage
            totals.prompt_tokens += prompt
            totals.generated_tokens += generated
            totals.cached_prompt_tokens = (None if cached is None or totals.cached_prompt_tokens is None
                                           else totals.cached_prompt_tokens + cached)
    return totals


def measurement(seconds: float, totals: Totals, **extra: Any) -> dict[str, Any]:
    """One system's numbers on one workload, as printed and stored."""
    cached = totals.cached_prompt_tokens
    return {
        "seconds": round(seconds, 3),
        "requests": totals.requests,
        "failed": totals.failed,
        "requests_per_s": round(totals.requests / seconds, 3),
        "generated_tokens": totals.generated_tokens,
        "generated_tokens_per_s": round(totals.generated_tokens / seconds, 2),
        "prompt_tokens": totals.prompt_tokens,
        "cached_prompt_tokens": "n/a" if cached is None else cached,
        "prefix_cache_hit_rate": "n/a" if cached is None else round(cached / max(1, totals.prompt_tokens), 4),
        **extra,
    }


def tree_cpu_seconds(pids: Sequence[int]) -> float:
    """User and system CPU seconds used so far by these processes and every live descendant of theirs (vLLM's
    EngineCore among them); a process that has exited counts nothing."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in tree:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


def engine_args(model: str, kv_cache_bytes: int, max_num_seqs: int, max_num_batched_tokens: int,
                max_model_len: int) -> dict[str, Any]:
    """dscbatch's defaults (prefix caching on, eager mode on the CPU, stats on) with the benchmark's KV cache
    and batch limits, and the corrected tokenizer directory (vLLM never gets the model's own config)."""
    from dscbatch.jobs.hf_tokenizer import faithful_tokenizer_dir
    from dscbatch.jobs.tokenizer import resolve_model_dir
    from dscbatch.workers.engine import default_engine_args, running_on_cpu

    args = default_engine_args(model, running_on_cpu())
    args.update(kv_cache_memory_bytes=kv_cache_bytes, max_num_seqs=max_num_seqs,
                max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
                tokenizer=str(faithful_tokenizer_dir(resolve_model_dir(model))))
    return args


def run_logged(command: Sequence[str], log: Path, timeout: float, env: Mapping[str, str] | None = None,
               ok: Sequence[int] = (0,), check: Callable[[], None] | None = None) -> tuple[float, str]:
    """Run ``command`` with its stderr in ``log``; returns (seconds, stdout). Raises with the log's tail
    unless the exit status is in ``ok``. ``check()`` runs every second and may raise to give up early (a
    dead worker: ``submit --wait`` would wait for ever); the command's whole process group is stopped then,
    and on timeout, so no vLLM engine process outlives it."""
    from dscbatch.workers.embedded import stop_process

    started = time.perf_counter()
    with log.open("ab") as stream, tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=stream,
                                   env=None if env is None else dict(env), start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while process.poll() is None:
                try:
                    process.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{' '.join(command[:4])} ... ran over {timeout} s") from None
                    if check is not None:
                        check()
        finally:
            if process.poll() is None:
                stop_process(process)
        seconds = time.perf_counter() - started
        out.seek(0)
        stdout = out.read().decode(errors="replace")
    if process.returncode not in ok:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited with {process.returncode}:\n{log_tail(log)}")
    return seconds, stdout


def log_tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").strip().splitlines()[-lines:])

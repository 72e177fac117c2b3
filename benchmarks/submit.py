"""Submit benchmark: lines/s and Redis bytes per request for ``submit``, against validation alone, and on long
prompts against the tokenizer alone.

Usage: ``python benchmarks/submit.py --model TOKENIZER_DIR [--lines 100000] [--long-lines 4000] [--json out.json]``.
Starts its own redis-server. Two files, each measured in the same run as its baseline:

- ``--lines`` short mixed lines (completion, FIM, chat, repository): the baseline is the reader's validation
  pass over the same file, so the ratio shows what rendering, tokenizing and storing shards cost on top of reading;
- ``--long-lines`` completion lines of about 950 tokens: the baseline is the ``tokenizers`` library's
  ``encode_batch`` of the same prompts (read beforehand, 256 at a time as ``submit`` batches them, on every core),
  so the ratio is submit's rate against the tokenizer's (the target: at least 0.8).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from reader import make_file, print_report
from redis_memory import write_job
from tokenizers import Tokenizer

from dscbatch.core.settings import Settings
from dscbatch.jobs.reader import check_file
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import SubmitOptions, submit_job
from dscbatch.workers.embedded import free_port, start_redis, stop_process

BATCH = 256  # prompts per encode_batch call, as submit's RENDER_CHUNK


def submit_seconds(store: JobStore, path: Path, model: str) -> tuple[float, int]:
    """Seconds ``submit_job`` took for the file, and how many shards it queued."""
    queued: list[str] = []
    started = time.perf_counter()
    submit_job(store, lambda queue, job, key: queued.append(key), path, SubmitOptions(model=model))
    return time.perf_counter() - started, len(queued)


def long_prompts(store: JobStore, directory: Path, model: str, lines: int) -> dict[str, float]:
    path = directory / "long.jsonl"
    write_job(path, lines, words=900, seed=0)  # about 950 tokens a line
    with path.open() as stream:
        prompts = [json.loads(line)["prompt"] for line in stream]
    tokenizer = Tokenizer.from_file(str(Path(model) / "tokenizer.json"))
    started = time.perf_counter()
    tokens = sum(len(encoding.ids) for start in range(0, lines, BATCH)
                 for encoding in tokenizer.encode_batch(prompts[start:start + BATCH], add_special_tokens=False))
    encode_s = time.perf_counter() - started
    submit_s, _ = submit_seconds(store, path, model)
    return {"long_lines": lines, "long_tokens_per_line": tokens / lines, "encode_batch_lines_per_s": lines / encode_s,
            "long_submit_lines_per_s": lines / submit_s, "ratio_submit_vs_encode_batch": encode_s / submit_s}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--long-lines", type=int, default=4000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        make_file(path, args.lines)
        started = time.perf_counter()
        check_file(path)
        validate_s = time.perf_counter() - started
        port = free_port()
        redis_process = start_redis(Path(tmp), port)
        try:
            store = JobStore.connect(Settings(redis_url=f"redis://127.0.0.1:{port}/0"))
            submit_s, shards = submit_seconds(store, path, args.model)
            used = int(store.client.info("memory")["used_memory"]) - int(
                store.client.info("memory")["used_memory_startup"])
            long = long_prompts(store, Path(tmp), args.model, args.long_lines)
        finally:
            stop_process(redis_process)
    report = {
        "lines": args.lines,
        "validate_lines_per_s": args.lines / validate_s,
        "submit_lines_per_s": args.lines / submit_s,
        "ratio_submit_vs_validate": validate_s / submit_s,
        "redis_bytes_per_request": used / args.lines,
        "shards": shards,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **long,
    }
    print_report(report, args.json)


if __name__ == "__main__":
    main()

"""Time from ``dscbatch submit`` to its first shard queued, and the submitting process's peak RSS.

Usage: ``python benchmarks/first_shard.py --model TOKENIZER_DIR [--lines 200000] [--json out.json]``.
Starts its own redis-server (no worker: the queue only grows), writes ``--lines`` chat lines of about 100
prompt tokens that share a system prompt (issue 23's shape), runs ``dscbatch submit`` as a subprocess, and
polls the model's queue every 10 ms: ``first_shard_s`` is the time from the process's start to the first
message in the queue, ``submit_s`` to the process's exit; ``peak_rss_mb`` is the process's ``ru_maxrss``.
Run it with the ``dscbatch`` of the code to measure on ``PYTHONPATH`` (before and after a change).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from dscbatch.jobs.submission import queue_name
from dscbatch.workers.embedded import free_port, start_redis, stop_process

SYSTEM = ("You are a careful senior Python reviewer. Answer briefly, quote the line you mean, and prefer "
          "standard-library solutions over new dependencies.")
WORDS = ("parse", "cache", "shard", "queue", "token", "merge", "retry", "index", "buffer", "stream", "worker")


def make_file(path: Path, lines: int) -> None:
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as stream:
        for i in range(lines):
            words = " ".join(rng.choice(WORDS) for _ in range(40))
            stream.write(json.dumps({"id": f"q{i}", "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Question {i}: what does this do? {words}"}]}) + "\n")


def measure(path: Path, model: str, redis_url: str, stop_at_first: bool = False) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    queue = queue_name("dscbatch", model)
    env = {**os.environ, "DSCBATCH_REDIS_URL": redis_url}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "dscbatch.cli.main", "submit", str(path), "--model", model],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first = None
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)  # wait4: the child's own peak RSS
        if pid:
            break
        if first is None and client.llen(queue):
            first = time.perf_counter() - started
            if stop_at_first:
                process.terminate()  # the submission is cut short: its exit code and totals mean nothing
        time.sleep(0.01)
    finished = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if first is None and client.llen(queue):
        first = finished
    return {"first_shard_s": round(first, 2) if first is not None else None, "submit_s": round(finished, 1),
            "queued_shards": client.llen(queue), "exit": process.returncode,
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--stop-at-first", action="store_true", help="Terminate submit at its first shard.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dscbatch-first-shard-") as tmp:
        path = Path(tmp) / "chat.jsonl"
        make_file(path, args.lines)
        port = free_port()
        redis_process = start_redis(Path(tmp), port)
        try:
            report = {"lines": args.lines, **measure(path, args.model, f"redis://127.0.0.1:{port}/0",
                                                     args.stop_at_first)}
        finally:
            stop_process(redis_process)
    print(json.dumps(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

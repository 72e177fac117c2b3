"""Submit benchmark: lines/s and Redis bytes per request for ``submit``, against validation alone.

Usage: ``python benchmarks/submit.py --model TOKENIZER_DIR [--lines 100000] [--json out.json]``. Starts its
own redis-server. The baseline is the reader's validation pass over the same file in the same run, so the
ratio shows what rendering, tokenizing and storing shards cost on top of reading.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from reader import make_file, print_report

from dscbatch.jobs.reader import check_file
from dscbatch.jobs.settings import Settings
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import SubmitOptions, submit_job
from dscbatch.workers.embedded import free_port, start_redis, stop_process


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--lines", type=int, default=100_000)
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
            queued: list[str] = []
            started = time.perf_counter()
            submit_job(store, lambda queue, job, key: queued.append(key), path, SubmitOptions(model=args.model))
            submit_s = time.perf_counter() - started
            used = int(store.client.info("memory")["used_memory"]) - int(
                store.client.info("memory")["used_memory_startup"])
        finally:
            stop_process(redis_process)
    report = {
        "lines": args.lines,
        "validate_lines_per_s": args.lines / validate_s,
        "submit_lines_per_s": args.lines / submit_s,
        "ratio_submit_vs_validate": validate_s / submit_s,
        "redis_bytes_per_request": used / args.lines,
        "shards": len(queued),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print_report(report, args.json)


if __name__ == "__main__":
    main()

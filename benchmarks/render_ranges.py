"""The planning wave of cluster rendering (issue 23) on moto's S3: stat, range plan, and the count wave.

Usage: ``python benchmarks/render_ranges.py [--lines 200000] [--range-mb 8] [--json out.json]``.
Uploads ``--lines`` chat lines (``benchmarks/first_shard.py``'s shape) to a moto S3 server on loopback, then
times: ``stat_s`` (the planning read: size and ETag), one process reading the whole object line by line
(``whole_read_lines_per_s``, the floor any single-process submit pays before rendering), and the count wave
(:func:`dscbatch.jobs.byteranges.count_range` over every range) in this process, then in a pool of one
and of two fresh processes (their start, imports and S3 client included). The counts
are checked against the file's line count. Rendering is timed by ``benchmarks/cluster_render.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from first_shard import make_file

from dscbatch.jobs import byteranges
from dscbatch.jobs.reader import DEFAULT_MAX_LINE_BYTES, _raw_lines
from dscbatch.workers.embedded import free_port


def _count(args: tuple[str, int, int]) -> byteranges.RangeCount:
    url, start, end = args
    return byteranges.count_range(url, start, end, DEFAULT_MAX_LINE_BYTES)


def count_wave(url: str, ranges: list[tuple[int, int]], processes: int) -> tuple[float, int]:
    started = time.perf_counter()
    with ProcessPoolExecutor(processes) as pool:
        counts = list(pool.map(_count, [(url, start, end) for start, end in ranges]))
    return time.perf_counter() - started, sum(c.physical for c in counts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--range-mb", type=float, default=8)
    parser.add_argument("--json")
    args = parser.parse_args()

    import fsspec
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    try:
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        fsspec.filesystem("s3").mkdir(bucket)
        url = f"s3://{bucket}/chat.jsonl"
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "chat.jsonl"
            make_file(local, args.lines)
            fsspec.filesystem("s3").put(str(local), url)

        started = time.perf_counter()
        stat = byteranges.stat_input(url)
        stat_s = time.perf_counter() - started
        ranges = byteranges.plan_ranges(stat.size, int(args.range_mb * 1024 * 1024))

        started = time.perf_counter()
        whole = sum(1 for _ in _raw_lines(url, DEFAULT_MAX_LINE_BYTES))
        whole_s = time.perf_counter() - started

        started = time.perf_counter()
        inproc = sum(_count((url, start, end)).physical for start, end in ranges)
        inproc_s = time.perf_counter() - started
        one_s, one_lines = count_wave(url, ranges, 1)
        two_s, two_lines = count_wave(url, ranges, 2)
        assert whole == inproc == one_lines == two_lines == args.lines, (whole, one_lines, two_lines)
        result: dict[str, Any] = {
            "lines": args.lines, "bytes": stat.size, "ranges": len(ranges), "range_mb": args.range_mb,
            "cpus": os.cpu_count(), "stat_s": round(stat_s, 4),
            "whole_read_lines_per_s": round(whole / whole_s),
            "count_in_process_lines_per_s": round(inproc / inproc_s),
            "count_wave_1proc_lines_per_s": round(one_lines / one_s),
            "count_wave_2proc_lines_per_s": round(two_lines / two_s),
            "count_wave_2proc_s": round(two_s, 3),
        }
    finally:
        server.stop()
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

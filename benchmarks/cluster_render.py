"""Cluster rendering (``submit --render cluster``) against today's local submit, side by side on one file.

Usage: ``python benchmarks/cluster_render.py --model TOKENIZER_DIR [--lines 200000] [--range-mb 8]
[--rounds 1] [--systems local cluster_1 cluster_2] [--json out.json]``.

Starts its own redis-server and work folder, writes ``--lines`` chat lines (``benchmarks/first_shard.py``'s
shape: about 100 prompt tokens, a shared system prompt) and, in each round, times ``dscbatch submit`` from
the command's start to its exit (every shard saved and queued; no engine serves the queue) three ways:

- ``local``: today's submit, rendering in its own process (the baseline);
- ``cluster_1``: ``--render cluster`` with one ``dscbatch worker --render-only`` process serving the render
  queue;
- ``cluster_2``: the same with two render processes (one per core of this machine).

(Count, render, then merge waves: ``jobs/clusterrender.py``.)

The render workers are started (and their tokenizer loaded, by a warm-up job) before the timing, as a
cluster's workers are. Redis is emptied between runs. Each run's job is checked: ``total`` equals the lines
and its shards hold every item once. Reported: seconds, lines/s and the submit process's peak RSS of each,
``cluster_2 / local`` (the issue's target: at least 0.9) and ``cluster_2 / cluster_1``, the per-task figures
(one range counted, one rendered into its partitions' runs, and those runs merged into shards, in this process)
from which docs/benchmarks.md extrapolates to N render processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from first_shard import make_file

from dscbatch.core.settings import Settings
from dscbatch.jobs.byteranges import count_range, plan_ranges
from dscbatch.jobs.rangemerge import merge_runs
from dscbatch.jobs.rangerender import render_range
from dscbatch.jobs.reader import DEFAULT_MAX_LINE_BYTES
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import SubmitOptions
from dscbatch.jobs.tokenizer import ModelTokenizer, model_name
from dscbatch.workers.embedded import free_port, start_redis, stop_process


def submit(env: dict[str, str], path: Path, model: str, *extra: str) -> tuple[float, str, int]:
    """Seconds, job id and the submit process's peak RSS in KB (GNU time's ``%M``)."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        started = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, sys.executable, "-m", "dscbatch.cli.main",
                               "submit", str(path), "--model", model, *extra],
                              env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        peak_kb = int(rss.read().split()[-1])
    if done.returncode != 0:
        raise RuntimeError(f"submit {' '.join(extra)} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds, done.stdout.split()[-1], peak_kb


def check_job(store: JobStore, job_id: str, lines: int) -> None:
    status = store.status(job_id)
    seen = 0
    for number in range(status.shards):
        payload = store.load_shard(store.shard_key(job_id, number))
        assert payload is not None, (job_id, number)
        seen += len(payload["items"])
    assert status.total == lines == seen, (status.total, lines, seen)


def start_render_workers(env: dict[str, str], store: JobStore, model: str, count: int,
                         logs: Path) -> list[subprocess.Popen[bytes]]:
    processes = []
    for n in range(count):
        with (logs / f"render{n}.log").open("ab") as log:
            processes.append(subprocess.Popen([sys.executable, "-m", "dscbatch.cli.main", "worker", "--render-only",
                                               "--model", model], env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
    deadline = time.monotonic() + 120
    while len(store.workers(render_only=True)) < count:
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            raise RuntimeError(f"render workers did not start; see {logs}")
        time.sleep(0.2)
    return processes


def per_task(path: Path, model: str, range_bytes: int, store: JobStore) -> dict[str, Any]:
    """One range counted and one rendered (grouped, cut, shards saved) in this process: a render process's
    rates, with the tokenizer already loaded."""
    ranges = plan_ranges(path.stat().st_size, range_bytes)
    start, end = ranges[0]
    started = time.perf_counter()
    counted = count_range(str(path), start, end, DEFAULT_MAX_LINE_BYTES)
    count_s = time.perf_counter() - started
    tokenizer = ModelTokenizer.load(model)
    options = SubmitOptions(model=model)
    header = {"job": "bench-per-task", "model": model_name(model), "stop": [], "created": int(time.time())}
    started = time.perf_counter()
    rendered = render_range(store, header, options, tokenizer, str(path), start, end, 1, 0, len(ranges), 0)
    render_s = time.perf_counter() - started
    assert not rendered.refused
    runs = path.parent / "runs"
    runs.write_bytes(b"".join(rendered.runs))
    offsets = [sum(len(run) for run in rendered.runs[:partition]) for partition in range(len(rendered.runs))]
    started = time.perf_counter()
    merged = sum(len(shard) for offset, run in zip(offsets, rendered.runs, strict=True)
                 for shard in merge_runs([(str(runs), offset, len(run))], True, True, 256, 1 << 20)[0])
    merge_s = time.perf_counter() - started
    return {"range_bytes": end - start, "range_lines": counted.physical,
            "count_mb_per_s": round((end - start) / count_s / 1e6, 1),
            "render_lines_per_s": round(counted.physical / render_s),
            "merge_lines_per_s": round(merged / merge_s)}


SYSTEMS = ("local", "cluster_1", "cluster_2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--range-mb", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    range_bytes = int(args.range_mb * 1024 * 1024)
    with tempfile.TemporaryDirectory(prefix="dscbatch-cluster-render-") as tmp:
        folder = Path(tmp)
        path = folder / "chat.jsonl"
        make_file(path, args.lines)
        size = path.stat().st_size
        warm = folder / "warm.jsonl"
        make_file(warm, 10)
        port = free_port()
        redis_process = start_redis(folder, port)
        redis_url = f"redis://127.0.0.1:{port}/0"
        env = {**os.environ, "DSCBATCH_REDIS_URL": redis_url, "DSCBATCH_WORK_URL": str(folder / "work")}
        store = JobStore.connect(Settings(redis_url=redis_url, work_url=str(folder / "work")))
        runs: dict[str, list[float]] = {name: [] for name in args.systems}
        peaks: dict[str, list[int]] = {name: [] for name in args.systems}
        try:
            for _ in range(args.rounds):
                for name in runs:
                    workers = [] if name == "local" else start_render_workers(env, store, args.model,
                                                                              int(name[-1]), folder)
                    try:
                        if workers:
                            submit(env, warm, args.model, "--render", "cluster")  # each loads its tokenizer
                        store.client.flushall()
                        extra = ["--render", "cluster", "--range-bytes", str(range_bytes)] if workers else []
                        seconds, job_id, peak_kb = submit(env, path, args.model, *extra)
                        check_job(store, job_id, args.lines)
                        runs[name].append(seconds)
                        peaks[name].append(peak_kb)
                        print(f"{name}: {seconds:.1f} s, submit's peak RSS {peak_kb / 1024:.0f} MB", file=sys.stderr)
                    finally:
                        for worker in workers:
                            stop_process(worker)
                        store.client.flushall()
            tasks = per_task(path, args.model, range_bytes, store)
        finally:
            stop_process(redis_process)
    median = {name: statistics.median(seconds) for name, seconds in runs.items()}
    report = {
        "lines": args.lines, "bytes": size, "range_mb": args.range_mb,
        "cpus": os.cpu_count(), "rounds": args.rounds,
        **{f"{name}_s": round(value, 2) for name, value in median.items()},
        **{f"{name}_lines_per_s": round(args.lines / value) for name, value in median.items()},
        **{f"{name}_submit_peak_rss_mb": round(max(kb) / 1024) for name, kb in peaks.items()},
        **({"cluster_2_vs_local": round(median["local"] / median["cluster_2"], 3)}
           if {"local", "cluster_2"} <= set(median) else {}),
        **({"cluster_2_vs_cluster_1": round(median["cluster_1"] / median["cluster_2"], 3)}
           if {"cluster_1", "cluster_2"} <= set(median) else {}),
        "per_task": tasks,
    }
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

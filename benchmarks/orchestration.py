"""Where a dscbatch job's time goes besides the engine (issue 15): a warm worker, jobs submitted as the
throughput benchmark submits them, each one's timeline from the worker's log.

Usage: ``python benchmarks/orchestration.py [--workloads many-contexts long-contexts] [--repeats 3]
[--kv-cache-bytes 12582912] [--json out.json]`` (about 2 minutes on 2 cores with the tiny model).

Per job, seconds from ``dscbatch submit --wait -o`` starting: ``received`` (the worker's Celery has the last of
the job's shards: submit's start, imports, reading, rendering, tokenizing, sorting and storing are before it),
``engine`` (from then to the last shard stored: the engine's work, and storing results as they come),
``written`` (the worker wrote the results file) and ``exit`` (submit saw it and exited). Also timed: the
interpreter and the imports of ``dscbatch submit`` alone (``import dscbatch.cli.main``, the Celery app).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from reader import print_report
from throughput_common import DEFAULT_MAX_MODEL_LEN, DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS, engine_args
from throughput_dscbatch import VARIANTS, Cluster
from workloads import DEFAULT_MODEL, write_workloads

MiB = 1 << 20


def imports_seconds() -> float:
    started = time.perf_counter()
    imports = "import dscbatch.cli.main, dscbatch.core.celery_app, dscbatch.jobs.submission"
    subprocess.run([sys.executable, "-c", imports], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--workloads", nargs="+", default=["many-contexts", "long-contexts"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kv-cache-bytes", type=int, default=12 * MiB)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = str(Path(args.model).resolve())
    work = Path(tempfile.mkdtemp(prefix="dscbatch-orchestration-"))
    paths = write_workloads(work, args.workloads, 1.0, model)
    engine = engine_args(model, args.kv_cache_bytes, DEFAULT_MAX_NUM_SEQS, DEFAULT_MAX_NUM_BATCHED_TOKENS,
                         DEFAULT_MAX_MODEL_LEN)
    report: dict[str, Any] = {"imports_s": [round(imports_seconds(), 3) for _ in range(3)], "jobs": []}
    print(f"python + imports of dscbatch submit: {report['imports_s']} s", file=sys.stderr, flush=True)
    cluster = Cluster(model, engine, 1, VARIANTS["c"], args.shard_size, work)
    cluster.start()
    try:
        for name in args.workloads:
            for repeat in range(args.repeats):
                before = cluster.log_sizes()
                started = time.time()
                seconds = cluster.run(paths[name], work / f"{name}.{repeat}.out.jsonl", 600)["seconds"]
                time.sleep(0.5)  # the worker's last log lines
                received = max(cluster.logged_since(before, " received"))
                stored = max(cluster.logged_since(before, "already done"))
                written = max(cluster.logged_since(before, " results to "))
                job = {"workload": name, "received": round(received - started, 3),
                       "engine": round(stored - received, 3), "written": round(written - started, 3),
                       "exit": seconds}
                report["jobs"].append(job)
                print(f"{name:<14} shards received {job['received']:5.2f} s, engine and storing "
                      f"{job['engine']:5.2f} s, file written {job['written']:5.2f} s, "
                      f"submit exited {job['exit']:5.2f} s",
                      file=sys.stderr, flush=True)
    finally:
        cluster.close()
    print_report(report, args.json)


if __name__ == "__main__":
    main()

"""The control plane at a GPU pool's rate: one job of many items through submit, N workers with the SIMULATED
engine (``dscbatch worker --engine sim``: no model, a GPU's timing) and the results file, on real Redis and Celery.

Usage: ``python benchmarks/scale.py --model TOKENIZER_DIR [--items 1000000] [--workers 1 2 4 8]
[--max-tokens 64] [--store local s3] [--json out.json]``. For each work folder (``--store``: a local folder, or
a bucket on moto's S3 API server in a process of its own) and worker count it starts a fresh redis-server and the
workers, then runs ``dscbatch submit --wait --output FOLDER`` and reports:

- items/s from the submit command's start to the job's end, and the time from submit to the first stored result;
- Redis: peak ``used_memory`` above idle (INFO memory), CPU seconds per 1,000 items (INFO cpu);
- the workers' CPU seconds per 1,000 items (the simulated engine's own work included: it sleeps for the GPU's
  time and decodes the token ids as the real engine's output is decoded);
- the results file: seconds from the job's end to the file written, and lines/s;
- the submit command's own CPU seconds per 1,000 items.

Ratios and per-item costs are what carry to other machines; absolute rates are this machine's.

``--chaos`` (issue 22: every id exactly once under faults) runs one job instead, on 8 workers and a work folder on
moto's S3 server reached through a loopback TCP proxy (``scripts/outage_proxy.py``, shared with
``tests/test_faults_storage.py``), with redis-server on ``--appendonly yes --appendfsync everysec`` as in
``k8s/base/redis.conf``. From the job's first stored result to its end: one worker (picked at random, ``--seed``)
is SIGKILLed every 10 s and a replacement started, so 8 keep running; at 45 s redis-server is SIGKILLed and
started again on the same port and data folder (the AOF reloaded; with ``--truncate-aof`` first cut back to
5 s before the kill with ``redis-check-aof --truncate-to-timestamp``, ``scripts/redis_aof.py``: a lost tail);
at 80 s the proxy is cut (every connection closed, new ones refused) for 30 s. It then reads the results file
and reports whether every input id is there exactly once and in input order, the error lines, the kills,
Redis' restart time and peak ``used_memory``, the outage window, the job's wall time and the workers'
storage-retry log lines. ``--keep FOLDER`` keeps the logs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))

from reader import print_report
from throughput_common import tree_cpu_seconds

from dscbatch.core.settings import Settings
from dscbatch.jobs.store import JobStore
from dscbatch.workers.embedded import free_port, start_redis, stop_process

WORKER_START_SECONDS = 120


def write_items(path: Path, items: int, max_tokens: int) -> None:
    with path.open("w") as out:
        for i in range(items):
            out.write(json.dumps({"id": f"s{i}", "prompt": f"# task {i}\ndef solve_{i}(x):\n",
                                  "params": {"max_tokens": max_tokens}}) + "\n")


def environment(settings: Settings) -> dict[str, str]:
    values = {f"DSCBATCH_{name.upper()}": str(value) for name, value in settings.model_dump().items()
              if value is not None}
    return {**{k: v for k, v in os.environ.items() if not k.startswith("DSCBATCH_")}, **values}


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Sampler(threading.Thread):
    """Redis' used_memory and the job's first stored result, read every 0.1 s."""

    def __init__(self, store: JobStore) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.peak = 0
        self.first_result: float | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            try:
                self.sample()
            except redis.RedisError:  # Redis restarted by --chaos
                continue

    def sample(self) -> None:
        self.peak = max(self.peak, int(self.store.client.info("memory")["used_memory"]))
        if self.first_result is None:
            jobs = self.store.job_ids()
            if jobs and self.store.status(jobs[0]).done + self.store.status(jobs[0]).failed > 0:
                self.first_result = time.time()


class S3Server:
    """moto's S3 API server in a process of its own, and a bucket on it."""

    def __init__(self, folder: Path) -> None:
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL": self.endpoint}
        self.process = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p",
                                         str(port)], stdout=(folder / "moto.log").open("wb"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        os.environ.update(self.env)
        import fsspec

        deadline = time.monotonic() + 30
        while True:
            try:
                fsspec.filesystem("s3", skip_instance_cache=True).mkdir("scale-work")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        stop_process(self.process)


def start_worker(model: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "dscbatch.cli.main", "worker", "--model", model, "--engine", "sim"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def start_workers(model: str, env: dict[str, str], folder: Path, store: JobStore,
                  processes: list[subprocess.Popen[bytes]], workers: int) -> None:
    """``workers`` simulated workers, logging to ``worker{N}.log``, registered and consuming when this returns."""
    for number in range(workers):
        processes.append(start_worker(model, env, folder / f"worker{number}.log"))
    deadline = time.monotonic() + WORKER_START_SECONDS
    while len(store.workers()) < workers:
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            raise RuntimeError(f"workers did not start: {(folder / 'worker0.log').read_text()[-3000:]}")
        time.sleep(0.2)
    time.sleep(1)  # Celery's consumers ready


def run(model: str, items: int, workers: int, max_tokens: int, path: Path, folder: Path,
        store_kind: str, code: Path | None = None) -> dict[str, Any]:
    """One job through ``submit --wait --output``; ``code``: a folder holding another ``dscbatch`` package to run
    instead (submit and workers), for a side-by-side comparison with an earlier commit."""
    port = free_port()
    server = start_redis(folder, port)
    s3 = S3Server(folder) if store_kind == "s3" else None
    work_url = f"s3://scale-work/w{workers}" if s3 is not None else str(folder / "work")
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", key_prefix="scale", work_url=work_url)
    store = JobStore.connect(settings)
    env = {**environment(settings), **(s3.env if s3 is not None else {})}
    if code is not None:
        env["PYTHONPATH"] = str(code)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        start_workers(model, env, folder, store, processes, workers)
        idle_memory = int(store.client.info("memory")["used_memory"])
        watched = [p.pid for p in processes]
        redis_before, workers_before = redis_cpu(store.client), tree_cpu_seconds(watched)
        sampler = Sampler(store)
        sampler.start()
        started = time.time()
        submit = subprocess.run([sys.executable, "-m", "dscbatch.cli.main", "submit", str(path), "--model", model,
                                 "--wait", "--output", str(folder / "out")], env=env, capture_output=True, text=True,
                                check=False)
        ended = time.time()
        sampler.stopping.set()
        sampler.join()
        if submit.returncode != 0:
            raise RuntimeError(f"submit failed ({submit.returncode}): {submit.stderr[-3000:]}")
        job = store.status(submit.stdout.split()[-1])
        record = store.client.hgetall(store.job_key(job.id))
        finished, finalized = float(record[b"finished"]), float(record[b"finalized"])
        redis_seconds = redis_cpu(store.client) - redis_before
        worker_seconds = tree_cpu_seconds(watched) - workers_before
        results_file = folder / "out" / "results.jsonl"
        lines = sum(1 for _ in results_file.open())
        assert lines == items == job.done, (lines, items, job.done)
        per_thousand = 1000 / items
        return {
            "code": str(code) if code is not None else "this tree", "store": store_kind, "workers": workers,
            "items": items, "max_tokens": max_tokens,
            "items_per_second": round(items / (finished - started), 1),
            "seconds_to_first_result": round((sampler.first_result or finished) - started, 2),
            "seconds_submit_to_results_file": round(finalized - started, 2),
            "redis_peak_used_memory_above_idle_mb": round((sampler.peak - idle_memory) / 1e6, 2),
            "redis_cpu_seconds_per_1000_items": round(redis_seconds * per_thousand, 4),
            "worker_cpu_seconds_per_1000_items": round(worker_seconds * per_thousand, 4),
            "results_file_seconds": round(finalized - finished, 2),
            "results_file_lines_per_second": round(lines / max(finalized - finished, 1e-3), 1),
            "submit_command_seconds": round(ended - started, 2),
        }
    finally:
        for process in processes:
            stop_process(process)
        stop_process(server)
        if s3 is not None:
            s3.stop()


AOF = ("--appendonly", "yes", "--appendfsync", "everysec")  # as k8s/base/redis.conf
CHAOS_WORKERS = 8
KILL_EVERY = 10.0  # seconds between SIGKILLs, from the first stored result to the job's end
REDIS_RESTART_AT = 45.0  # seconds after the first stored result
AOF_TAIL_LOST = 5.0  # --truncate-aof: the AOF is cut back to this many seconds before the kill
OUTAGE_AT, OUTAGE_SECONDS = 80.0, 30.0
CHAOS_DEADLINE = 1800.0


def chaos(model: str, items: int, max_tokens: int, path: Path, folder: Path, seed: int,
          truncate_aof: bool) -> dict[str, Any]:
    """One job on 8 workers, the work folder on moto's S3 server behind a proxy that is cut for 30 s, one
    SIGKILLed worker (replaced) every 10 s, and Redis (AOF, fsync every second) SIGKILLed and restarted once
    (``truncate_aof``: its AOF first cut back to 5 s before the kill, a lost tail)."""
    import random
    import signal

    import redis_aof
    from outage_proxy import OutageProxy

    aof = redis_aof.AOF if truncate_aof else AOF

    rng = random.Random(seed)
    port = free_port()
    servers = [start_redis(folder, port, *aof)]
    s3 = S3Server(folder)
    proxy = OutageProxy(int(s3.endpoint.rsplit(":", 1)[1]))
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", key_prefix="scale", work_url="s3://scale-work/chaos")
    store = JobStore.connect(settings)
    env = {**environment(settings), **s3.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"}
    processes: list[subprocess.Popen[bytes]] = []
    logs = CHAOS_WORKERS
    kills: list[float] = []
    events: dict[str, float] = {}
    submit: subprocess.Popen[str] | None = None
    try:
        start_workers(model, env, folder, store, processes, CHAOS_WORKERS)
        sampler = Sampler(store)
        sampler.start()
        started = time.time()
        submit = subprocess.Popen([sys.executable, "-m", "dscbatch.cli.main", "submit", str(path), "--model", model,
                                   "--wait", "--output", str(folder / "out")], env=env, stdout=subprocess.PIPE,
                                  stderr=(folder / "submit.log").open("w"), text=True)
        next_kill = None
        while submit.poll() is None:
            now = time.time()
            if now - started > CHAOS_DEADLINE:
                raise RuntimeError(f"the job did not finish in {CHAOS_DEADLINE} s: "
                                   f"{[store.status(job) for job in store.job_ids()]}")
            if sampler.first_result is None:
                time.sleep(0.2)
                continue
            clock = now - sampler.first_result
            next_kill = next_kill if next_kill is not None else now + KILL_EVERY
            if now >= next_kill:
                victim = rng.randrange(len(processes))
                processes[victim].send_signal(signal.SIGKILL)
                processes[victim].wait(30)
                processes[victim] = start_worker(model, env, folder / f"worker{logs}.log")
                logs += 1
                kills.append(round(clock, 1))
                next_kill += KILL_EVERY
            if clock >= REDIS_RESTART_AT - AOF_TAIL_LOST and "aof_noted" not in events:
                events["aof_noted"] = int(now)
            if clock >= REDIS_RESTART_AT and "redis_killed" not in events:
                events["redis_killed"] = round(clock, 2)
                servers[-1].send_signal(signal.SIGKILL)
                servers[-1].wait(30)
                if truncate_aof:
                    redis_aof.truncate(folder, int(events["aof_noted"]))
                servers.append(start_redis(folder, port, *aof))
                events["redis_restart_seconds"] = round(time.time() - sampler.first_result - clock, 2)
            if clock >= OUTAGE_AT and "outage_from" not in events:
                events["outage_from"] = round(clock, 2)
                proxy.down()
            if "outage_from" in events and "outage_to" not in events and clock >= OUTAGE_AT + OUTAGE_SECONDS:
                proxy.up()
                events["outage_to"] = round(clock, 2)
            time.sleep(0.1)
        ended = time.time()
        sampler.stopping.set()
        sampler.join()
        assert submit.stdout is not None
        output = submit.stdout.read()
        if submit.returncode != 0:
            raise RuntimeError(f"submit failed ({submit.returncode}): {(folder / 'submit.log').read_text()[-3000:]}")
        job = store.status(output.split()[-1])
        record = store.client.hgetall(store.job_key(job.id))
        first = sampler.first_result or ended
        ids, errors = [], []
        with (folder / "out" / "results.jsonl").open() as results:
            for line in results:
                result = json.loads(line)
                ids.append(result["id"])
                if result.get("error") is not None:
                    errors.append(f"{result['id']}: {result['error']}")
        expected = [f"s{i}" for i in range(items)]
        retries = sum(line.count("work folder: ") and "retrying" in line
                      for log in folder.glob("worker*.log") for line in log.read_text(errors="replace").splitlines())
        return {
            "scenario": "chaos", "store": "s3 behind a cuttable proxy", "workers": CHAOS_WORKERS, "items": items,
            "max_tokens": max_tokens, "seed": seed,
            "exactly_once_in_order": ids == expected, "results_lines": len(ids),
            "distinct_ids": len(set(ids)), "missing_ids": len(set(expected) - set(ids)),
            "duplicated_lines": len(ids) - len(set(ids)), "error_lines": len(errors), "errors_first": errors[:10],
            "job": {"state": job.state, "done": job.done, "failed": job.failed, "pending": job.pending},
            "kills": len(kills), "kill_seconds_after_first_result": kills,
            "redis_killed_seconds_after_first_result": events.get("redis_killed"),
            "redis_restart_seconds": events.get("redis_restart_seconds"),
            "redis_aof_cut_seconds_before_kill": (round(first + events["redis_killed"] - events["aof_noted"], 2)
                                                  if truncate_aof else None),
            "outage_seconds_after_first_result": [events.get("outage_from"), events.get("outage_to")],
            "seconds_to_first_result": round(first - started, 2),
            "items_done_seconds_after_first_result": round(float(record[b"finished"]) - first, 2),
            "results_file_seconds_after_first_result": round(float(record[b"finalized"]) - first, 2),
            "job_wall_seconds": round(ended - started, 2),
            "items_per_second": round(items / (ended - started), 1),
            "worker_storage_retry_log_lines": retries,
            "redis_peak_used_memory_mb": round(sampler.peak / 1e6, 2),
        }
    finally:
        if submit is not None and submit.poll() is None:
            submit.kill()
        for process in processes:
            stop_process(process)
        for server in servers:
            stop_process(server)
        if proxy.server is not None:
            proxy.down()
        s3.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model folder (its tokenizer renders and decodes)")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--store", nargs="+", choices=["local", "s3"], default=["local", "s3"],
                        help="where the work folder is: a local folder, or moto's S3 server")
    parser.add_argument("--chaos", action="store_true",
                        help="one run of 8 workers under faults instead (see the docstring); --workers, --store unused")
    parser.add_argument("--seed", type=int, default=22, help="--chaos: which worker each SIGKILL picks")
    parser.add_argument("--truncate-aof", action="store_true",
                        help="--chaos: cut Redis' AOF back 5 s before its kill (lose its tail) before the restart")
    parser.add_argument("--keep", type=Path, help="copy the run's folders (logs, results) here")
    parser.add_argument("--before", type=Path,
                        help="a folder holding a dscbatch package of an earlier commit (docs/benchmarks.md): each "
                             "run is made with it first, then with this tree, and the end-to-end ratio reported")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dscbatch-scale-") as temp:
        path = Path(temp) / "items.jsonl"
        write_items(path, args.items, args.max_tokens)
        if args.chaos:
            folder = Path(temp) / "chaos"
            folder.mkdir()
            try:
                report = chaos(args.model, args.items, args.max_tokens, path, folder, args.seed, args.truncate_aof)
            finally:
                if args.keep is not None:
                    shutil.copytree(folder, args.keep, dirs_exist_ok=True)
            print_report({"engine": "SIMULATED (dscbatch worker --engine sim): control plane only",
                          "runs": [report]}, args.json)
            return
        runs = []
        for store_kind in args.store:
            for workers in args.workers:
                for code in ([args.before] if args.before is not None else []) + [None]:
                    folder = Path(temp) / f"{store_kind}-w{workers}{'-before' if code is not None else ''}"
                    folder.mkdir()
                    runs.append(run(args.model, args.items, workers, args.max_tokens, path, folder, store_kind, code))
                    if code is None and args.before is not None:
                        before = runs[-2]["seconds_submit_to_results_file"]
                        runs[-1]["end_to_end_speedup_vs_before"] = round(
                            before / runs[-1]["seconds_submit_to_results_file"], 3)
                    print(json.dumps(runs[-1]), flush=True)
    print_report({"engine": "SIMULATED (dscbatch worker --engine sim): control plane only", "runs": runs},
                 args.json)


if __name__ == "__main__":
    main()

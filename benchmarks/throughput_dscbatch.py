"""System (c): dscbatch end to end with warm workers, driven through its command line as a user would.

A private redis-server and ``--workers`` ``dscbatch worker`` processes are started per variant (fresh
workers: an empty prefix cache, and the variant's worker flags); the clock runs from ``dscbatch submit FILE
--wait -o FOLDER`` (a worker writing its results file there), only once a warm-up job has finished.
"""

from __future__ import annotations

import compileall
import datetime
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from throughput_common import Usage, log_tail, measurement, read_totals, run_logged, tree_cpu_seconds

from dscbatch.core.settings import Settings
from dscbatch.jobs.store import JobStore
from dscbatch.workers.embedded import free_port, start_redis, stop_process

# The console script a user runs (``python -m`` would compile cli/main.py again on every start).
DSCBATCH = (str(Path(sys.executable).with_name("dscbatch")),)
# Exit status of `submit --wait` when some items failed: measured anyway, their count is reported.
ITEMS_FAILED_EXIT = 3
# Set by dscbatch's Engine itself (the model, and the corrected tokenizer directory it derives from it).
ENGINE_SET = frozenset({"model", "tokenizer"})
WORKER_START_SECONDS = 600


@dataclass(frozen=True)
class Variant:
    """Extra ``dscbatch submit`` flags and worker environment of one dscbatch setup, and the workloads it
    is measured on (all when None)."""

    submit_flags: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workloads: tuple[str, ...] | None = None


# One line per variant; each is compared with the baselines. The ablations each turn one design choice off,
# on the workload that choice is for: what it bought is their ratio to c.
VARIANTS: dict[str, Variant] = {
    "c": Variant(),
    "c-file-order": Variant(submit_flags=("--order", "file"), workloads=("interleaved", "duplicates")),
    "c-no-dedup": Variant(submit_flags=("--no-dedup",), workloads=("duplicates",)),
    "c-one-shard": Variant(env=(("DSCBATCH_SHARDS_IN_FLIGHT", "1"),), workloads=("varying", "unique")),
}


class Cluster:
    """``with Cluster(...) as cluster:`` a redis-server and warm workers; everything stopped on exit."""

    def __init__(self, model: str, engine_args: Mapping[str, Any], workers: int, variant: Variant,
                 shard_size: int, directory: Path) -> None:
        self.model, self.variant, self.workers = model, variant, workers
        self.directory = Path(tempfile.mkdtemp(prefix="cluster-", dir=directory))
        self.port = free_port()
        # Submit and workers both see the shard size: the workers size how many shards they hold from it.
        self.env = {**os.environ, **dict(variant.env), "DSCBATCH_REDIS_URL": f"redis://127.0.0.1:{self.port}/0",
                    "DSCBATCH_SHARD_MAX_REQUESTS": str(shard_size)}
        self.worker_command = [*DSCBATCH, "worker", "--model", model,
                               *(f"--engine-arg={key}={json.dumps(value)}" for key, value in engine_args.items()
                                 if key not in ENGINE_SET)]
        self.processes: list[subprocess.Popen[bytes]] = []
        self.log = self.directory / "dscbatch.log"
        self.metrics_ports = [free_port() for _ in range(workers)]

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def start(self) -> None:
        """Start redis-server and the workers, and return once they are warm; on failure stop them all."""
        compile_dscbatch()
        try:
            self.processes.append(start_redis(self.directory, self.port))
            for number in range(self.workers):
                with self.worker_log(number).open("wb") as log:
                    command = [*self.worker_command, "--metrics-port", str(self.metrics_ports[number])]
                    self.processes.append(subprocess.Popen(
                        command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        env=self.env, start_new_session=True))
            self._warm_up()
        except BaseException:
            self.close()
            raise

    def _check_workers(self) -> None:
        for number, worker in enumerate(self.processes[1:]):
            if worker.poll() is not None:
                raise RuntimeError(f"worker {number} exited with {worker.returncode}:\n"
                                   + log_tail(self.worker_log(number)))

    def _warm_up(self) -> None:
        """Wait for every worker's heartbeat, then run a small job: each engine has served a request."""
        store = JobStore.connect(Settings(redis_url=self.env["DSCBATCH_REDIS_URL"]))
        deadline = time.monotonic() + WORKER_START_SECONDS
        while len(store.workers()) < self.workers:
            self._check_workers()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers did not start within {WORKER_START_SECONDS} s")
            time.sleep(0.5)
        warm = self.directory / "warmup.jsonl"
        # One-request shards, a few per worker: with prefetch 1 each worker most likely serves some.
        warm.write_text("".join(json.dumps({"id": f"w{i}", "prompt": f"def warm_up_{i}(x):\n",
                                            "params": {"max_tokens": 8, "ignore_eos": True}}) + "\n"
                                for i in range(4 * self.workers)))
        env = {**self.env, "DSCBATCH_SHARD_MAX_REQUESTS": "1"}
        run_logged([*DSCBATCH, "submit", str(warm), "--model", self.model, "--wait"], self.log, 600, env,
                   check=self._check_workers)

    def run(self, input_path: Path, output: Path, timeout: float) -> dict[str, Any]:
        """Submit, wait for a worker to write the results file: the timed part."""
        folder = output.with_suffix(".d")
        preempted = self.preemptions()
        logs = self.log_sizes()
        cpu = self.cpu_seconds()
        started_at = time.time()
        started = time.perf_counter()
        _, stdout = run_logged([*DSCBATCH, "submit", str(input_path), "--model", self.model, "--wait", "-o",
                                str(folder), *self.variant.submit_flags], self.log, timeout, self.env,
                               ok=(0, ITEMS_FAILED_EXIT), check=self._check_workers)
        seconds = time.perf_counter() - started
        cpu = self.cpu_seconds() - cpu
        job_id = stdout.strip().splitlines()[-1]
        self._check_workers()
        (folder / "results.jsonl").replace(output)
        # The first shard's arrival in a worker (Celery logs each task it receives).
        received = self.logged_since(logs, " received")
        return measurement(seconds, read_totals(output, dscbatch_usage), job_id=job_id, output=str(output),
                           preemptions=self.preemptions() - preempted, cpu_s=round(cpu, 2),
                           **({"before_engine_s": round(min(received) - started_at, 3)} if received else {}))

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by redis-server, the workers with their engines, and the commands this
        process ran and waited for (``submit``)."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return children.ru_utime + children.ru_stime + tree_cpu_seconds([p.pid for p in self.processes])

    def log_sizes(self) -> list[int]:
        """Each worker log's size now: where ``logged_since`` starts reading."""
        return [self.worker_log(number).stat().st_size for number in range(self.workers)]

    def logged_since(self, sizes: list[int], text: str) -> list[float]:
        """The times of the worker log lines written since ``sizes`` that contain ``text``."""
        times = []
        for number, size in enumerate(sizes):
            with self.worker_log(number).open("rb") as log:
                log.seek(size)
                lines = log.read().decode(errors="replace").splitlines()
            times += [logged_at(line) for line in lines if line[:2] == "20" and text in line]
        return times

    def worker_log(self, number: int) -> Path:
        return self.directory / f"worker{number}.log"

    def preemptions(self) -> int:
        """vLLM's preemptions so far, summed over the workers (their /metrics, ``vllm_num_preemptions``)."""
        total = 0.0
        for port in self.metrics_ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
                for line in response.read().decode().splitlines():
                    if line.startswith("vllm_num_preemptions_total"):
                        total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def close(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
        self.processes.clear()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def compile_dscbatch() -> None:
    """Write the bytecode of dscbatch's modules, as installing a package does: an editable install under
    ``PYTHONDONTWRITEBYTECODE`` (this sandbox sets it) otherwise compiles the ~40 modules ``submit`` imports
    again on every start (0.05-0.1 s of each timed command)."""
    for name in ("cli", "core", "jobs", "workers", "monitoring"):
        spec = importlib.util.find_spec(f"dscbatch.{name}")
        for folder in (spec.submodule_search_locations or []) if spec is not None else []:
            compileall.compile_dir(folder, quiet=1)


def logged_at(line: str) -> float:
    """The time of a worker log line (``2026-12-04 17:00:00,123 ...``), in seconds since the epoch."""
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def dscbatch_usage(record: dict[str, Any]) -> Usage | None:
    if record["error"] is not None:
        return None
    usage = record["usage"]
    return usage["prompt_tokens"], usage["completion_tokens"], usage["cached_prompt_tokens"]

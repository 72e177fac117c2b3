"""Batch API overhead: one batch through ``dscbatch serve`` against ``submit`` of the same workload, same run.

Usage: ``python benchmarks/batch_api.py --model MODEL_DIR [--lines 256] [--max-tokens 32] [--rounds 4]
[--json out.json]``. Starts its own redis-server, one local worker and one server. Each round runs the
workload both ways, in ABBA order (submit first in rounds 0 and 3 of every four), each from a copy of the file
whose prompts start with the run's own salt (so no run finds another's prompts in vLLM's prefix cache):

- ``submit``: ``submit_job`` with an output folder, until the worker has written the job's results file, then
  that file read back;
- ``server``: the ``openai`` SDK uploads the file, creates the batch, polls it to ``completed`` and
  downloads its output and error files.

Both poll every 0.2 s. Each run's phases are timed, and so is its job: from the moment it was queued (its
submission returned) to the worker's commit of its results file (the job's ``finalized`` time in Redis). The
overhead is paired: each round's server time over its submit time, minus one, with its median and spread over
the rounds; and, steadier on a loaded machine where the job's own run varies by seconds, the server's time
outside the job less submit's, over submit's whole time.
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
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import openai
from reader import print_report

from dscbatch.core.celery_app import make_app, shard_enqueuer
from dscbatch.core.settings import Settings
from dscbatch.jobs import objectstore
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import SubmitOptions, submit_job
from dscbatch.jobs.tokenizer import model_name
from dscbatch.server.keys import ApiKeys
from dscbatch.workers.embedded import EmbeddedCluster, free_port, stop_process

POLL_SECONDS = 0.2


def write_workload(path: Path, model: str, lines: int, max_tokens: int, salt: str) -> None:
    with path.open("w") as stream:
        for i in range(lines):
            body = {"model": model, "prompt": f"# {salt} {i}\ndef f{i}(x):\n", "max_tokens": max_tokens,
                    "ignore_eos": True}
            stream.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                                     "body": body}) + "\n")


class Phases:
    """Seconds from the start to the end of each phase of one run, in order."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.marks: dict[str, float] = {}
        self.enqueued = 0.0  # wall-clock time by which the job was queued (its submission returned)
        self.job_s = 0.0  # from then to the worker's commit of the job's results file (its ``finalized`` time)

    def mark(self, name: str) -> None:
        self.marks[name] = time.perf_counter() - self.started

    @property
    def total(self) -> float:
        return list(self.marks.values())[-1]

    def durations(self) -> dict[str, float]:
        ends = list(self.marks.items())
        return {name: end - (ends[i - 1][1] if i else 0.0) for i, (name, end) in enumerate(ends)}


def run_submit(settings: Settings, store: JobStore, model: str, path: Path, folder: Path) -> Phases:
    phases = Phases()
    options = SubmitOptions(model=model, shard_max_requests=settings.shard_max_requests,
                            output_root=str(folder / "submit-jobs"))
    with shard_enqueuer(make_app(settings)) as enqueue:
        job_id = submit_job(store, enqueue, path, options)
    phases.mark("submit")
    phases.enqueued = time.time()
    while (status := store.status(job_id)).results_url is None:
        time.sleep(POLL_SECONDS)
    phases.mark("run")
    phases.job_s = (status.finalized or 0.0) - phases.enqueued
    with objectstore.open_read(status.results_url) as stream:
        assert sum(1 for _ in stream) == status.total
    phases.mark("read")
    return phases


def run_server(client: openai.OpenAI, store: JobStore, path: Path) -> Phases:
    phases = Phases()
    source = client.files.create(file=path.open("rb"), purpose="batch")
    phases.mark("upload")
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/completions", completion_window="24h")
    phases.mark("create")
    phases.enqueued = time.time()
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(POLL_SECONDS)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    phases.mark("run")
    lines = sum(len(client.files.content(file_id).text.splitlines())
                for file_id in (batch.output_file_id, batch.error_file_id) if file_id)
    assert batch.request_counts is not None and lines == batch.request_counts.total
    phases.mark("download")
    job = next(job for job in store.statuses(store.job_ids()) if job.input.endswith(f"(batch {batch.id})"))
    phases.job_s = (job.finalized or 0.0) - phases.enqueued
    return phases


def start_server(env: dict[str, str], model: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as stream:
        process = subprocess.Popen([sys.executable, "-m", "dscbatch.cli.main", "serve", "--model", model, "--port",
                                    str(port)], stdout=stream, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log.read_text()[-3000:]) from None
            time.sleep(0.2)


def summary(values: list[float]) -> dict[str, float]:
    """Median, spread (min and max) of a list of measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def report_of(args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each round's pair, the paired overhead (server over submit in the same round, minus one) with its median
    and spread, and each way's phases (medians)."""
    rounds = sorted({run["round"] for run in runs})
    pairs = [{run["way"]: run for run in runs if run["round"] == number} for number in rounds]
    overheads = [pair["server"]["total_s"] / pair["submit"]["total_s"] - 1 for pair in pairs]
    ways: dict[str, Any] = {}
    for way in ("submit", "server"):
        mine = [run for run in runs if run["way"] == way]
        ways[way] = {"total_s": summary([run["total_s"] for run in mine]),
                     "phases_median_s": {name: statistics.median(run["phases_s"][name] for run in mine)
                                         for name in mine[0]["phases_s"]}}
    return {"lines": args.lines, "max_tokens": args.max_tokens, "rounds": args.rounds, "runs": runs, **ways,
            "server_overhead": summary(overheads),
            # What the server adds outside the job's own run (which the load makes vary by seconds): each
            # round's time outside the job through the server, less submit's, over submit's whole time.
            "server_overhead_outside_job": summary([
                (pair["server"]["outside_job_s"] - pair["submit"]["outside_job_s"]) / pair["submit"]["total_s"]
                for pair in pairs]),
            "server_minus_submit_s": summary([pair["server"]["total_s"] - pair["submit"]["total_s"]
                                              for pair in pairs])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--lines", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    name = model_name(args.model)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedCluster(args.model) as cluster:
        folder = Path(tmp)
        settings = Settings(redis_url=cluster.redis_url, files_url=str(folder / "files"))
        store = JobStore.connect(settings)
        env = {**os.environ, "DSCBATCH_REDIS_URL": cluster.redis_url,
               "DSCBATCH_FILES_URL": settings.files_url}
        server = start_server(env, args.model, port := free_port(), folder / "server.log")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=ApiKeys(
            store).create("benchmark"), max_retries=0)
        try:
            while not store.workers():
                cluster.check_worker()
                time.sleep(0.5)
            warmup = folder / "warmup.jsonl"
            write_workload(warmup, name, 16, args.max_tokens, "warmup")
            run_submit(settings, store, args.model, warmup, folder)
            run_server(client, store, warmup)
            for round_number in range(args.rounds):
                # ABBA: each way runs first in half the rounds, so drift in the machine's load hits both alike.
                order = ["submit", "server"] if round_number % 4 in (0, 3) else ["server", "submit"]
                for way in order:
                    path = folder / f"{way}-{round_number}.jsonl"
                    write_workload(path, name, args.lines, args.max_tokens, f"{way}-{round_number}")
                    phases = (run_submit(settings, store, args.model, path, folder) if way == "submit"
                              else run_server(client, store, path))
                    runs.append({"round": round_number, "way": way, "total_s": phases.total,
                                 "job_s": phases.job_s, "outside_job_s": phases.total - phases.job_s,
                                 "phases_s": phases.durations()})
                    detail = ", ".join(f"{key} {value:.2f}" for key, value in phases.durations().items())
                    print(f"round {round_number} {way}: {phases.total:.2f} s ({detail}; job {phases.job_s:.2f})",
                          file=sys.stderr)
        finally:
            client.close()
            stop_process(server)
    print_report(report_of(args, runs), args.json)


if __name__ == "__main__":
    main()

"""Batch API overhead: one batch through ``dscbatch serve`` against ``submit`` of the same workload, same run.

Usage: ``python benchmarks/batch_api.py --model MODEL_DIR [--lines 256] [--max-tokens 32] [--rounds 2]
[--json out.json]``. Starts its own redis-server, one local worker and one server. Each round runs the
workload both ways, in alternating order, each from a copy of the file whose prompts start with the run's own
salt (so no run finds another's prompts in vLLM's prefix cache):

- ``submit``: ``submit_job`` with an output folder, until the worker has written the job's results file, then
  that file read back;
- ``server``: the ``openai`` SDK uploads the file, creates the batch, polls it to ``completed`` and
  downloads its output and error files.

Both poll every 0.2 s. The overhead is the server's median time over submit's, minus one.
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

from dscbatch.jobs import objectstore
from dscbatch.jobs.settings import Settings
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import SubmitOptions, submit_job
from dscbatch.jobs.tokenizer import model_name
from dscbatch.server.keys import ApiKeys
from dscbatch.workers.app import make_app, shard_enqueuer
from dscbatch.workers.embedded import EmbeddedCluster, free_port, stop_process

POLL_SECONDS = 0.2


def write_workload(path: Path, model: str, lines: int, max_tokens: int, salt: str) -> None:
    with path.open("w") as stream:
        for i in range(lines):
            body = {"model": model, "prompt": f"# {salt} {i}\ndef f{i}(x):\n", "max_tokens": max_tokens,
                    "ignore_eos": True}
            stream.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                                     "body": body}) + "\n")


def run_submit(settings: Settings, store: JobStore, model: str, path: Path, folder: Path) -> float:
    started = time.perf_counter()
    options = SubmitOptions(model=model, shard_max_requests=settings.shard_max_requests,
                            output_root=str(folder / "submit-jobs"))
    with shard_enqueuer(make_app(settings)) as enqueue:
        job_id = submit_job(store, enqueue, path, options)
    while (status := store.status(job_id)).results_url is None:
        time.sleep(POLL_SECONDS)
    with objectstore.open_read(status.results_url) as stream:
        assert sum(1 for _ in stream) == status.total
    return time.perf_counter() - started


def run_server(client: openai.OpenAI, path: Path) -> float:
    started = time.perf_counter()
    source = client.files.create(file=path.open("rb"), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/completions", completion_window="24h")
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(POLL_SECONDS)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    lines = sum(len(client.files.content(file_id).text.splitlines())
                for file_id in (batch.output_file_id, batch.error_file_id) if file_id)
    assert batch.request_counts is not None and lines == batch.request_counts.total
    return time.perf_counter() - started


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--lines", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    name = model_name(args.model)
    times: dict[str, list[float]] = {"submit": [], "server": []}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedCluster(args.model) as cluster:
        folder = Path(tmp)
        settings = Settings(redis_url=cluster.redis_url, files_url=str(folder / "files"))
        store = JobStore.connect(settings)
        env = {**os.environ, "DSCBATCH_REDIS_URL": cluster.redis_url,
               "DSCBATCH_FILES_URL": settings.files_url}
        server = start_server(env, args.model, port := free_port(), folder / "server.log")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=ApiKeys(
            store.client, store.prefix).create("benchmark"), max_retries=0)
        try:
            while not store.workers():
                cluster.check_worker()
                time.sleep(0.5)
            warmup = folder / "warmup.jsonl"
            write_workload(warmup, name, 16, args.max_tokens, "warmup")
            run_submit(settings, store, args.model, warmup, folder)
            for round_number in range(args.rounds):
                order = ["submit", "server"] if round_number % 2 == 0 else ["server", "submit"]
                for way in order:
                    path = folder / f"{way}-{round_number}.jsonl"
                    write_workload(path, name, args.lines, args.max_tokens, f"{way}-{round_number}")
                    seconds = (run_submit(settings, store, args.model, path, folder) if way == "submit"
                               else run_server(client, path))
                    times[way].append(seconds)
                    print(f"round {round_number} {way}: {seconds:.2f} s", file=sys.stderr)
        finally:
            client.close()
            stop_process(server)
    report: dict[str, Any] = {
        "lines": args.lines, "max_tokens": args.max_tokens, "rounds": args.rounds,
        "submit_s": times["submit"], "server_s": times["server"],
        "submit_median_s": statistics.median(times["submit"]), "server_median_s": statistics.median(times["server"]),
    }
    report["server_overhead"] = report["server_median_s"] / report["submit_median_s"] - 1
    print_report(report, args.json)


if __name__ == "__main__":
    main()

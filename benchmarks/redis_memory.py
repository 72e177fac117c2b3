"""Redis memory over a job's life: before a run, while a job of N items is pending, after many finalized jobs.

Usage: ``python benchmarks/redis_memory.py --model MODEL_DIR [--pending-items 2000] [--prompt-words 700]
[--jobs 50] [--job-items 1000] [--json out.json]``. Starts its own redis-server and one local worker (``dscbatch
run``'s embedded cluster) with ``DSCBATCH_OUTPUT_URL`` set, so that every job is finalized into a results file
and leaves Redis. Reports Redis ``used_memory`` (INFO memory):

- before any job (the worker's heartbeat, Celery's bindings);
- right after submitting one job of ``--pending-items`` long prompts (about 980 tokens each by default),
  before a worker ran it: bytes per pending item (its shard payload, compressed token ids);
- the same as the bytes of Redis' keys (``MEMORY USAGE`` summed), which leaves out client buffers and caches;
- once that job and ``--jobs`` more jobs of ``--job-items`` short items each are finalized: the growth per
  finished job (its record) and per item (none: results and shards left Redis).

Readings taken with the cluster idle (before, and after each wait for finalization) wait until Redis has shrunk
idle clients' buffers, and report the number of clients, whose memory is not the jobs'.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from reader import print_report

from dscbatch.core.celery_app import enqueue_shard, make_app
from dscbatch.core.settings import Settings
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import SubmitOptions, submit_job
from dscbatch.jobs.tokenizer import ModelTokenizer
from dscbatch.workers.embedded import EmbeddedCluster

WORDS = ("def", "return", "self", "value", "items", "for", "in", "range", "if", "else", "import", "class", "data",
         "result", "index", "count", "path", "name", "list", "dict", "while", "yield", "lambda", "None", "True")


# Redis shrinks an idle client's query and reply buffers after 2 s (clientsCron); readings taken once the
# cluster is idle wait that long, so that one connection's buffer from the last reply does not count as data.
IDLE_CLIENTS_SECONDS = 3


def used_memory(store: JobStore) -> int:
    return int(store.client.info("memory")["used_memory"])


def idle_reading(store: JobStore) -> tuple[int, int, dict[str, int], int]:
    """used_memory, the keys' bytes, INFO memory's parts and the number of clients, once buffers settled."""
    time.sleep(IDLE_CLIENTS_SECONDS)
    clients = int(store.client.info("clients")["connected_clients"])
    return used_memory(store), key_bytes(store), memory_parts(store), clients


# INFO memory's parts of used_memory besides the keys' data: they show where growth that no key holds goes.
MEMORY_PARTS = ("used_memory_dataset", "used_memory_overhead", "mem_clients_normal", "used_memory_scripts",
                "mem_aof_buffer", "used_memory_functions", "mem_overhead_db_hashtable_rehashing")


def memory_parts(store: JobStore) -> dict[str, int]:
    info = store.client.info("memory")
    return {name: int(info[name]) for name in MEMORY_PARTS if name in info}


def key_bytes(store: JobStore) -> int:
    """The bytes Redis holds for its keys (``MEMORY USAGE`` of each), without buffers and script caches."""
    return sum(int(store.client.memory_usage(key, samples=0) or 0) for key in store.client.scan_iter(count=1000))


def write_job(path: Path, items: int, words: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w") as stream:
        for i in range(items):
            text = f"# item {seed}-{i}\n" + " ".join(rng.choice(WORDS) for _ in range(words)) + "\n"
            stream.write(json.dumps({"id": f"j{seed}-{i}", "prompt": text, "params": {"max_tokens": 1}}) + "\n")


def wait_finalized(store: JobStore, job_ids: list[str], cluster: EmbeddedCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(status.results_url is None for status in store.statuses(job_ids)):
        cluster.check_worker()
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs not finalized within {timeout} s")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--pending-items", type=int, default=2000)
    parser.add_argument("--prompt-words", type=int, default=700)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--job-items", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DSCBATCH_OUTPUT_URL"] = str(Path(tmp) / "out")
        with EmbeddedCluster(args.model) as cluster:
            settings = Settings.from_env(redis_url=cluster.redis_url)
            store = JobStore.connect(settings)
            app = make_app(settings)
            options = SubmitOptions(model=args.model, shard_max_requests=settings.shard_max_requests,
                                    shard_max_tokens=settings.shard_max_tokens, output_root=settings.output_url)

            def enqueue(queue: str, job_id: str, shard_key: str) -> None:
                enqueue_shard(app, queue, job_id, shard_key)

            while not store.workers():
                cluster.check_worker()
                time.sleep(0.5)
            baseline, baseline_keys, baseline_parts, baseline_clients = idle_reading(store)
            pending_file = Path(tmp) / "pending.jsonl"
            write_job(pending_file, args.pending_items, args.prompt_words, seed=0)
            sample = json.loads(pending_file.read_text().splitlines()[0])["prompt"]
            prompt_tokens = len(ModelTokenizer.load(args.model).encode(sample))
            # The worker only starts on the shards once they are all queued: none has run yet.
            pending_job = submit_job(store, lambda queue, job, key: None, pending_file, options)
            pending, pending_keys = used_memory(store), key_bytes(store)
            for number in range(store.status(pending_job).shards):
                enqueue(store.status(pending_job).queue, pending_job, store.shard_key(pending_job, number))
            wait_finalized(store, [pending_job], cluster, 3600)
            before_jobs, before_jobs_keys, before_parts, before_clients = idle_reading(store)
            job_ids = []
            for seed in range(1, args.jobs + 1):
                path = Path(tmp) / f"job{seed}.jsonl"
                write_job(path, args.job_items, 8, seed)
                job_ids.append(submit_job(store, enqueue, path, options))
            wait_finalized(store, job_ids, cluster, 3600)
            after_jobs, after_jobs_keys, after_parts, after_clients = idle_reading(store)
            keys = int(store.client.dbsize())
    finished = args.jobs + 1
    report = {
        "used_memory_before": baseline,
        "pending_items": args.pending_items,
        "prompt_tokens_per_pending_item": prompt_tokens,
        "used_memory_with_job_pending": pending,
        "bytes_per_pending_item": (pending - baseline) / args.pending_items,
        "used_memory_after_first_job_finalized": before_jobs,
        "finalized_jobs": args.jobs,
        "items_per_job": args.job_items,
        "used_memory_after_jobs_finalized": after_jobs,
        "bytes_per_finished_job": (after_jobs - before_jobs) / args.jobs,
        "bytes_per_finished_item": (after_jobs - before_jobs) / (args.jobs * args.job_items),
        "growth_since_start_per_finished_job": (after_jobs - baseline) / finished,
        "key_bytes_before": baseline_keys,
        "key_bytes_per_pending_item": (pending_keys - baseline_keys) / args.pending_items,
        "key_bytes_per_finished_job": (after_jobs_keys - before_jobs_keys) / args.jobs,
        "key_bytes_growth_since_start_per_finished_job": (after_jobs_keys - baseline_keys) / finished,
        "redis_keys_at_end": keys,
        "connected_clients": {"before": baseline_clients, "after_first_job_finalized": before_clients,
                              "after_jobs_finalized": after_clients},
        "memory_parts": {"before": baseline_parts, "after_first_job_finalized": before_parts,
                         "after_jobs_finalized": after_parts},
    }
    print_report(report, args.json)


if __name__ == "__main__":
    main()

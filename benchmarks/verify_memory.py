"""Redis memory of a verification job's items: what its ``verify`` specs and verification records cost Redis.

Usage: ``python benchmarks/verify_memory.py [--items 10000] [--spec-bytes 1500] [--record-bytes 1200]``. Starts
its own redis-server and a work folder in a temporary directory, then, through the store alone (no worker, no
executor): stores a job's specs (``save_verify_specs``, as submit does) and results awaiting verification,
then a verification record for every item (``record_verdict``, as executors do), then moves the records to
the work folder (``flush_verdicts``, as a worker's housekeeping does, where the store has it). Reports Redis
``used_memory`` and the job's keys (``MEMORY USAGE`` summed) after each step, per item. Runs against any
version of the store: one without ``flush_verdicts`` skips that step.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from dscbatch.jobs.store import JobStore, ResultEntry


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--spec-bytes", type=int, default=1500)  # HumanEval's tests are 0.5-2 KB
    parser.add_argument("--record-bytes", type=int, default=1200)  # one sample's verdict with its program
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dscbatch-verify-memory-") as folder:
        port = free_port()
        server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                                   "--dir", folder], stdout=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            store = JobStore(client, "bench", str(Path(folder) / "work"))
            job_id, items = "bench-job", args.items
            store.create_job(job_id, {"model": "m", "queue": "q", "created": time.time(), "total": items,
                                      "shards": 0})

            def job_bytes() -> int:
                keys = [store.job_key(job_id), *store.keys.job_parts(job_id)]
                return sum(client.memory_usage(key) or 0 for key in keys)

            def reading(step: str, start: tuple[int, int]) -> tuple[int, int]:
                now = (int(client.info("memory")["used_memory"]), job_bytes())
                print(f"{step:<44} used_memory {now[0] - start[0]:>12,} B ({(now[0] - start[0]) / items:8.1f} B/item)"
                      f"   job keys {now[1] - start[1]:>12,} B ({(now[1] - start[1]) / items:8.1f} B/item)")
                return now

            start = (int(client.info("memory")["used_memory"]), job_bytes())
            tests = "assert f() == 1  # " + "x" * (args.spec_bytes - 20)
            store.save_verify_specs(job_id, {index: json.dumps({"tests": tests}) for index in range(items)})
            reading("specs stored (submit)", start)
            for first in range(0, items, 256):
                store.record(job_id, [ResultEntry(index, json.dumps({"id": f"q{index}", "text": "r"}), "done",
                                                  verify=True) for index in range(first, min(first + 256, items))])
            awaiting = reading("+ results awaiting verification", start)
            record = json.dumps({"passed": 1, "samples": 1, "verdicts": [
                {"status": "passed", "program": "x" * (args.record_bytes - 60)}]})
            for index in range(items):
                store.record_verdict(job_id, index, record, 1, 1)
            reading("+ every verification record stored", start)
            if hasattr(store, "flush_verdicts"):
                store.flush_verdicts(job_id)
                reading("+ records moved to the work folder", start)
            assert store.status(job_id).settled
            print(f"(results awaiting verification held {awaiting[1] - start[1]:,} B of job keys)")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()

"""Faults around a job's end and a shard's start: the worker writing a results file killed mid-write, and a
shard whose worker died between its delivery and its claim.

Real workers, real Redis, and S3 through s3fs against moto's server; a loopback TCP proxy in front of that
server holds the results file's upload, so the kill lands while the upload is in flight (an observed event).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import s3fs

from dscbatch.core.heartbeat_loop import HEARTBEAT_SECONDS, HEARTBEAT_TTL_SECONDS
from dscbatch.core.keys import UNACKED as UNACKED_KEY
from dscbatch.core.settings import Settings
from dscbatch.jobs.store import JobStore

from . import test_faults
from .conftest import wait_until, worker_env
from .test_faults import spawn, worker_logs
from .test_pipeline import dscbatch

pytestmark = [pytest.mark.faults, pytest.mark.engine, pytest.mark.timeout(600)]
ITEMS = 24
# The fault tests' fixtures: a key prefix (and queue) of the test's own, and its workers, killed at teardown.
fault_settings = test_faults.fault_settings
fault_store = test_faults.fault_store
workers = test_faults.workers
started = test_faults.started


class HoldingProxy:
    """Forwards TCP to ``upstream``; a connection whose request matches ``pattern`` is held (nothing more of it
    is forwarded, so that request never completes) until ``release``."""

    def __init__(self, upstream: int, pattern: bytes) -> None:
        self.upstream = upstream
        self.pattern = re.compile(pattern)
        self.held = threading.Event()
        self.released = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, requests: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                if requests and not self.released.is_set() and self.pattern.search(data):
                    self.held.set()
                    self.released.wait()
                    break
                target.sendall(data)
        except OSError:
            pass
        for each in (source, target):
            each.close()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.close()


def job_file(tmp_path: Path) -> Path:
    path = tmp_path / "job.jsonl"
    path.write_text("".join(json.dumps({"id": f"item-{i}", "prompt": f"# task {i}\ndef solve_{i}(x):",
                                        "params": {"max_tokens": 8}}) + "\n" for i in range(ITEMS)))
    return path


@pytest.fixture
def upload_proxy(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[HoldingProxy]:
    """The S3 server as workers started after it see it: through a proxy that holds a results file's upload."""
    proxy = HoldingProxy(int(s3_endpoint.rsplit(":", 1)[1]), rb"PUT /\S*results\.jsonl")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    yield proxy
    proxy.close()


@pytest.fixture
def proxied(upload_proxy: HoldingProxy, started: list[subprocess.Popen[bytes]]) -> list[subprocess.Popen[bytes]]:
    """The test's workers, started after (so through) the upload proxy."""
    return started


@pytest.mark.workers(2)
def test_the_worker_writing_a_results_file_is_killed_mid_upload_and_another_writes_it(
        fault_settings: Settings, fault_store: JobStore, tiny_model: Path, upload_proxy: HoldingProxy,
        proxied: list[subprocess.Popen[bytes]], bucket: str, s3_endpoint: str, tmp_path: Path) -> None:
    proxy, logs = upload_proxy, worker_logs(tmp_path, 2)
    output = f"{bucket}/out"
    job_id = dscbatch(fault_settings, "submit", str(job_file(tmp_path)), "--model", str(tiny_model), "-o",
                      output).stdout.split()[-1]
    wait_until(proxy.held.is_set, 300, "the results file's upload to start")
    writer = fault_store.client.hget(f"{fault_settings.key_prefix}:finalizing", job_id)
    assert writer is not None  # the writer holds the finalization claim
    victim = next(process for process in proxied if writer.decode().endswith(f"-{process.pid}"))
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    proxy.release()
    s3 = s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True)
    assert not s3.exists(f"{output}/results.jsonl")  # nothing half-written at the final name
    # The survivor's heartbeat sees the writer gone (its heartbeat expires), drops its claim, writes the file.
    wait_until(lambda: fault_store.status(job_id).results_url is not None,
               HEARTBEAT_TTL_SECONDS + 2 * HEARTBEAT_SECONDS + 120, "another worker to write the results file")
    lines = s3.cat(f"{output}/results.jsonl").decode().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [f"item-{i}" for i in range(ITEMS)]
    assert all(json.loads(line)["error"] is None for line in lines)
    assert sorted(path.rsplit("/", 1)[1] for path in s3.find(output)) == ["manifest.json", "results.jsonl"]
    survivor = next(log for log, process in zip(logs, proxied, strict=True) if process is not victim)
    assert f"while writing job {job_id}'s results; another worker writes them" in survivor.read_text()


DOOMED_CONSUMER = """
import sys
from dscbatch.core.settings import Settings
from dscbatch.core.celery_app import make_app
app = make_app(Settings.from_env())
with app.connection_for_read() as connection:
    queue = connection.SimpleQueue(sys.argv[1], no_ack=False)
    message = queue.get(block=True, timeout=120)
    print("delivered", message.payload[0][1], flush=True)
    sys.stdin.read()  # until killed, holding the message unacknowledged
"""


def test_a_shard_delivered_to_a_worker_killed_before_claiming_it_runs_again_within_a_minute(
        fault_settings: Settings, fault_store: JobStore, tiny_model: Path, workers: list[subprocess.Popen[bytes]],
        tmp_path: Path) -> None:
    assert fault_settings.visibility_timeout == 3600
    job_id = dscbatch(fault_settings, "submit", str(job_file(tmp_path)), "--model", str(tiny_model)).stdout.split()[-1]
    queue = fault_store.status(job_id).queue
    # A consumer takes one shard from the queue through kombu, as a worker's consumer does, and is killed
    # before it could claim it: the delivery is left unacknowledged, claimed by nobody.
    with subprocess.Popen([sys.executable, "-c", DOOMED_CONSUMER, queue], env=worker_env(fault_settings),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True) as doomed:
        assert doomed.stdout is not None
        shard_key = doomed.stdout.readline().split()[-1]
        doomed.kill()
    entries = [json.loads(entry) for entry in fault_store.client.hvals(UNACKED_KEY)]
    assert any(queue == routing_key and shard_key in json.dumps(message) for message, _, routing_key in entries)
    assert not fault_store.client.hlen(f"{fault_settings.key_prefix}:claims")
    log = tmp_path / "w.log"
    spawn(fault_settings, fault_store, tiny_model, workers, log)
    ready = time.monotonic()
    wait_until(lambda: fault_store.status(job_id).pending == 0, 120, "the job to complete")
    # Well within a minute of the worker's start (the delivery was already over a heartbeat's lifetime old),
    # not after the visibility timeout.
    assert time.monotonic() - ready < 60
    assert f"shard {shard_key} was delivered" in log.read_text()
    out = tmp_path / "out.jsonl"
    dscbatch(fault_settings, "results", job_id, "-o", str(out))
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [f"item-{i}" for i in range(ITEMS)]
    assert not any(shard_key in json.dumps(json.loads(entry)) for entry in fault_store.client.hvals(UNACKED_KEY))

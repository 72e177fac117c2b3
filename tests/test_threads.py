"""Essential threads that fail: a loop thread (heartbeat, housekeeping, sweeper) logs and goes on, the engine loop
ends the process with a status its supervisor sees, and ``/healthz`` answers 503 once any of them is gone."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import psutil
import pytest
from prometheus_client import CollectorRegistry

from dscbatch.core import threads
from dscbatch.core.heartbeat_loop import HeartbeatLoop
from dscbatch.core.threads import THREAD_DIED_EXIT
from dscbatch.jobs import finalize
from dscbatch.jobs.store import JobStore
from dscbatch.monitoring.server import MetricsServer
from dscbatch.workers.housekeeping import Housekeeper
from dscbatch.workers.repair import Repairer

ROUND_SECONDS = 0.02
WAIT_SECONDS = 30


class FlakyHeartbeat(HeartbeatLoop):
    """A heartbeat whose first beat meets a process that vanished while psutil read it (not a Redis error)."""

    interval = ROUND_SECONDS

    def __init__(self, store: JobStore) -> None:
        super().__init__(name="test-heartbeat", what="heartbeat")
        self.store = store
        self.beats = 0
        self.beaten = threading.Event()

    def beat(self) -> None:
        self.beats += 1
        if self.beats == 1:
            raise psutil.NoSuchProcess(pid=1234, name="VLLM::Worker")
        self.store.beat("test-heartbeat-host", {"beats": self.beats}, ttl=30)
        self.beaten.set()

    def upkeep(self) -> None:
        pass


def test_a_heartbeat_round_that_raises_is_logged_and_the_next_one_beats(store: JobStore,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    heartbeat = FlakyHeartbeat(store)
    with caplog.at_level(logging.ERROR, logger="dscbatch.core.threads"):
        heartbeat.start()
        try:
            assert heartbeat.beaten.wait(WAIT_SECONDS), "no heartbeat after the failed round"
            assert heartbeat.is_alive() and threads.gone() == []
        finally:
            heartbeat.stop()
            heartbeat.join(WAIT_SECONDS)
    assert "test-heartbeat-host" in store.workers()
    failed = [record for record in caplog.records if record.exc_info]
    assert failed and "a round failed" in failed[0].getMessage()
    assert failed[0].exc_info is not None and failed[0].exc_info[0] is psutil.NoSuchProcess


def test_housekeeping_survives_an_unexpected_error_and_sweeps_on(store: JobStore,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real_awaiting = finalize.awaiting

    def awaiting_that_fails_once(store: JobStore) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("a bug in one round")
        return real_awaiting(store)

    def requeue(job_id: str, shard_key: str) -> None:
        raise AssertionError(f"nothing is stranded here, yet {shard_key} was requeued")

    monkeypatch.setattr(finalize, "awaiting", awaiting_that_fails_once)
    store.client.delete(store.keys.retention_sweep)
    repairer = Repairer(store, "test-housekeeper", "dsctest.no-such-model", requeue)
    housekeeper = Housekeeper(store, "test-housekeeper", 7 * 86400, repairer)
    housekeeper.interval = ROUND_SECONDS
    housekeeper.start()
    try:
        # The retention sweep comes after the finalize step, so it is claimed only by a round that got past it.
        deadline = time.monotonic() + WAIT_SECONDS
        while store.client.get(store.keys.retention_sweep) != b"test-housekeeper" and time.monotonic() < deadline:
            time.sleep(ROUND_SECONDS)
        assert store.client.get(store.keys.retention_sweep) == b"test-housekeeper"
        assert calls >= 2 and housekeeper.is_alive()
    finally:
        housekeeper.stop()
        housekeeper.join(WAIT_SECONDS)
        store.client.delete(store.keys.retention_sweep)


# An engine stand-in whose step raises what no engine error handler expects (the thread logic is under test here;
# every test of generation runs on real vLLM).
ENGINE_LOOP_SCRIPT = textwrap.dedent("""
    import logging, sys
    from dscbatch.jobs.requests import Params
    from dscbatch.workers.batching import EngineLoop
    from dscbatch.workers.engine import EngineRequest

    logging.basicConfig(stream=sys.stderr, level=logging.INFO)

    class BrokenStep:
        max_num_seqs = 4
        def add(self, request):
            return request.key, None
        def step(self):
            raise ValueError("a bug in the engine loop")
        def abort(self, ids):
            pass

    loop = EngineLoop(BrokenStep())
    loop.start()
    request = EngineRequest(key="0", prompt_token_ids=[1, 2], params=Params(), stop_token_ids=[])
    for result in loop.stream([request], should_stop=lambda: False):
        print("unexpected result", result)
    print("the stream ended without the process exiting")
""")


def test_an_unexpected_error_in_the_engine_loop_ends_the_process_with_its_status() -> None:
    # Without this the shard's stream would wait forever while the heartbeat stayed fresh.
    done = subprocess.run([sys.executable, "-c", ENGINE_LOOP_SCRIPT], capture_output=True, text=True,
                          timeout=WAIT_SECONDS)
    assert done.returncode == THREAD_DIED_EXIT, done.stderr
    assert "the engine loop failed unexpectedly; exiting with status 71" in done.stderr
    assert "ValueError: a bug in the engine loop" in done.stderr
    assert "unexpected result" not in done.stdout and "without the process exiting" not in done.stdout


def _healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=WAIT_SECONDS) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_healthz_turns_503_naming_an_essential_thread_that_is_gone() -> None:
    server = MetricsServer(0, CollectorRegistry(), healthy=lambda: True, host="127.0.0.1")
    server.start()
    release = threading.Event()
    worker: Any = threading.Thread(target=release.wait, name="dscbatch-test-essential", daemon=True)
    threads.watch(worker)
    worker.start()
    try:
        assert _healthz(server.port) == (200, "ok\n")
        release.set()
        worker.join(WAIT_SECONDS)
        assert _healthz(server.port) == (503, "unhealthy: thread dscbatch-test-essential is gone\n")
    finally:
        threads.unwatch(worker)
        server.httpd.shutdown()
        server.httpd.server_close()

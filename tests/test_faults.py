"""Faults: whatever crashes, every input id ends as exactly one result, and the counts match the output.

Each test runs a real job through real workers (their own queue, so the session's shared worker stays out)
and kills or stops them on purpose.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dscbatch.core.heartbeat_loop import HEARTBEAT_SECONDS
from dscbatch.core.settings import Settings
from dscbatch.jobs.store import JobStore
from dscbatch.workers.batching import ENGINE_DIED_EXIT
from dscbatch.workers.embedded import free_port, start_redis, stop_process

from .conftest import (
    STORE_PAUSE_SECONDS,
    claimants,
    engine_core,
    engines_paused,
    start_worker,
    start_workers,
    step_until,
    wait_until,
)
from .test_pipeline import dscbatch, read_jsonl

# Each test has workers of its own, started by the ``started`` fixture before it runs (engines start side by
# side, 30-90 s here, bounded by conftest's WORKER_START_SECONDS); the test's own work, a fault and a job, takes
# under a minute here, and 600 s leaves 3x margin on a machine twice as slow (docs/development.md).
pytestmark = [pytest.mark.faults, pytest.mark.engine, pytest.mark.timeout(600)]
ITEMS = 48


@pytest.fixture
def fault_settings(redis_url: str, request: pytest.FixtureRequest) -> Settings:
    """A prefix (and so a queue) of the test's own, and the settings its ``workers`` mark gives its workers.
    Two shards held per worker (auto would hold all twelve at once): kills land between shards and mid-shard."""
    own = Settings(redis_url=redis_url, key_prefix=f"fault-{request.node.name[5:25]}", shard_max_requests=4,
                   shutdown_timeout=2, shards_in_flight=2)
    mark = request.node.get_closest_marker("workers")
    return own if mark is None else own.model_copy(update=mark.kwargs)


@pytest.fixture
def fault_store(fault_settings: Settings) -> JobStore:
    return JobStore.connect(fault_settings)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:  # nothing of theirs is needed any more: no graceful shutdown to wait for
        with contextlib.suppress(ProcessLookupError):
            kill_group(process, signal.SIGKILL)
    for process in started:
        process.wait()


def spawn(settings: Settings, store: JobStore, model: Path, started: list[subprocess.Popen[bytes]],
          *logs: Path) -> list[subprocess.Popen[bytes]]:
    """Workers started at once (one per log), kept in ``started`` for the fixture to kill."""
    processes = start_workers(settings, store, model, list(logs))
    started.extend(processes)
    return processes


def worker_logs(tmp_path: Path, count: int) -> list[Path]:
    """The logs of the ``started`` workers, in their order."""
    return [tmp_path / f"w{number}.log" for number in range(count)]


@pytest.fixture
def started(fault_settings: Settings, fault_store: JobStore, tiny_model: Path,
            workers: list[subprocess.Popen[bytes]], tmp_path: Path,
            request: pytest.FixtureRequest) -> list[subprocess.Popen[bytes]]:
    """The workers the test's ``workers(count, **settings)`` mark asks for, up before the test begins (their
    logs: ``worker_logs``)."""
    mark = request.node.get_closest_marker("workers")
    assert mark is not None, "a test using `started` says how many workers with @pytest.mark.workers(count)"
    return spawn(fault_settings, fault_store, tiny_model, workers, *worker_logs(tmp_path, mark.args[0]))


MaxTokens = Callable[[int], int]  # item number -> its max_tokens


def submit(settings: Settings, model: Path, tmp_path: Path, max_tokens: MaxTokens = lambda _: 96) -> tuple[str, Path]:
    path = tmp_path / "job.jsonl"
    path.write_text("".join(json.dumps({"id": f"item-{i}", "prompt": f"# task {i}\ndef solve_{i}(x):",
                                        "params": {"max_tokens": max_tokens(i), "ignore_eos": True}}) + "\n"
                            for i in range(ITEMS)))
    job_id = dscbatch(settings, "submit", str(path), "--model", str(model), "--echo-prompt").stdout.split()[-1]
    return job_id, path


def check_output(settings: Settings, store: JobStore, job_id: str, path: Path, model: Path, tmp_path: Path,
                 max_tokens: MaxTokens = lambda _: 96) -> None:
    """Every id exactly once, in order; each result carries its own request's prompt ids and all its tokens;
    counts agree."""
    out = tmp_path / "out.jsonl"
    dscbatch(settings, "results", job_id, "-o", str(out))
    results = read_jsonl(out)
    rendered = [json.loads(line) for line in
                dscbatch(settings, "render", str(path), "--model", str(model)).stdout.splitlines()]
    assert [r["id"] for r in results] == [r["id"] for r in rendered]
    for number, (result, expected) in enumerate(zip(results, rendered, strict=True)):
        assert result["error"] is None
        assert result["prompt_token_ids"] == expected["prompt_token_ids"]
        assert result["outputs"][0]["completion_tokens"] == max_tokens(number)
    status = store.status(job_id)
    assert (status.state, status.done, status.failed, status.pending) == ("completed", ITEMS, 0, 0)
    assert status.completion_tokens == sum(r["usage"]["completion_tokens"] for r in results)


def kill_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    os.killpg(process.pid, sig)


def live_claimant(processes: list[subprocess.Popen[bytes]], store: JobStore,
                  prefix: str) -> subprocess.Popen[bytes] | None:
    """One of the workers that holds a shard's claim now, if any does."""
    holders = claimants(store, prefix)
    return next((process for process in processes if process.pid in holders), None)


def wait_for_log(worker: subprocess.Popen[bytes], log: Path, text: str, timeout: float, what: str) -> None:
    """Wait until the worker's log says ``text``; if it never does, fail with every thread's stack (the worker
    writes them on SIGUSR1) and the log's end, so a CI failure says where the worker was."""
    try:
        wait_until(lambda: text in log.read_text(), timeout, what)
    except AssertionError as error:
        worker.send_signal(signal.SIGUSR1)
        time.sleep(2)
        raise AssertionError(f"{error}; the worker's log ends:\n{log.read_text()[-12000:]}") from None


def sigkill_a_claimant(alive: list[subprocess.Popen[bytes]], store: JobStore, prefix: str) -> None:
    """SIGKILL one of the live workers while it holds a shard's claim (waiting for one to claim: a killed
    worker's claims stay until its heartbeat expires, then its shards come back and a live worker claims
    one), and drop it from ``alive``."""
    wait_until(lambda: live_claimant(alive, store, prefix), 120, "a claim")
    victim = live_claimant(alive, store, prefix)
    assert victim is not None
    kill_group(victim, signal.SIGKILL)
    victim.wait()
    alive.remove(victim)


@pytest.mark.workers(3)
def test_sigkill_workers_mid_shard_several_times(fault_settings: Settings, fault_store: JobStore, tiny_model: Path,
                                                 started: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    alive = list(started)
    cores = {process.pid: engine_core(process) for process in alive}
    prefix = fault_settings.key_prefix
    # The engines are held from the start: the first kill lands mid-shard before any item finishes.
    with engines_paused(*cores.values()):
        job_id, path = submit(fault_settings, tiny_model, tmp_path)
        sigkill_a_claimant(alive, fault_store, prefix)
    # The survivors make progress; the second kill lands while the first victim's shards are still away
    # (they come back after its heartbeat expires), so the job cannot have ended.
    wait_until(lambda: fault_store.status(job_id).done >= 4, 300, "progress")
    with engines_paused(*(cores[process.pid] for process in alive)):
        sigkill_a_claimant(alive, fault_store, prefix)
    killed_at = time.monotonic()
    # The dead workers' shards come back through the survivor's heartbeat, not the visibility timeout.
    wait_until(lambda: fault_store.status(job_id).pending == 0, 300, "the job to complete")
    assert time.monotonic() - killed_at < fault_settings.visibility_timeout
    check_output(fault_settings, fault_store, job_id, path, tiny_model, tmp_path)


@pytest.mark.workers(2)
def test_sigkill_of_the_engine_process_makes_the_worker_exit(fault_settings: Settings, fault_store: JobStore,
                                                            tiny_model: Path, started: list[subprocess.Popen[bytes]],
                                                            tmp_path: Path) -> None:
    both = started
    cores = {process.pid: engine_core(process) for process in both}
    # Held from the start: the worker whose engine is killed holds a shard in it, on a machine of any speed.
    with engines_paused(*cores.values()):
        job_id, path = submit(fault_settings, tiny_model, tmp_path)
        wait_until(lambda: live_claimant(both, fault_store, fault_settings.key_prefix), 120, "a claim")
        victim = live_claimant(both, fault_store, fault_settings.key_prefix)
        assert victim is not None
        cores[victim.pid].kill()
        # No worker hangs on a dead engine: it exits within one heartbeat (plus the engine's own teardown).
        assert victim.wait(timeout=HEARTBEAT_SECONDS + 60) == ENGINE_DIED_EXIT
    wait_until(lambda: fault_store.status(job_id).pending == 0, 300, "the job to complete")
    check_output(fault_settings, fault_store, job_id, path, tiny_model, tmp_path)


def long_every_twelfth(number: int) -> int:
    """Four long items, the others short and of spread lengths: short ones finish (and are stored) one after
    another while the long ones still run."""
    return 2048 if number % 12 == 0 else 8 + 4 * number


@pytest.mark.workers(2)
def test_sigterm_mid_shard_hands_the_shard_back_in_bounded_time(fault_settings: Settings, fault_store: JobStore,
                                                                tiny_model: Path,
                                                                started: list[subprocess.Popen[bytes]],
                                                                tmp_path: Path) -> None:
    one_shard = fault_settings.model_copy(update={"shard_max_requests": ITEMS})
    both = started
    cores = {process.pid: engine_core(process) for process in both}
    with engines_paused(*cores.values()):
        job_id, path = submit(one_shard, tiny_model, tmp_path, max_tokens=long_every_twelfth)
        wait_until(lambda: claimants(fault_store, fault_settings.key_prefix), 120, "the shard to start")
        (pid,) = claimants(fault_store, fault_settings.key_prefix)
        # Stop the worker mid-shard: some of its items stored, the long ones held in the engine.
        # Slices of 50 ms of the engine's CPU, each followed by a pause in which the worker stores what the engine
        # produced: the long ones (2,048 tokens) are still running when the first results (12 tokens and up) are
        # stored. (Slices of 5 ms, which the clock's 10 ms ticks round up, left the engine no progress in 120 s
        # on one machine, for a reason not found; the engine logged 0.4 generated tokens/s.)
        step_until(cores[pid], lambda: fault_store.status(job_id).done > 0, 120, "the shard's first results",
                   slice_seconds=0.05, pause_seconds=STORE_PAUSE_SECONDS)
        worker, log = next((process, log) for process, log in zip(both, worker_logs(tmp_path, 2), strict=True)
                           if process.pid == pid)
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)  # as Kubernetes does: to the main process only
        wait_for_log(worker, log, "handed back to the queue", fault_settings.shutdown_timeout + 30, "the hand-back")
        status = fault_store.status(job_id)
        assert 0 < status.done < ITEMS and status.pending == ITEMS - status.done  # it stopped mid-shard
    assert worker.wait(timeout=fault_settings.shutdown_timeout + 30) == 0
    assert time.monotonic() - started < fault_settings.shutdown_timeout + 30
    # The other worker, already up, runs the rest.
    wait_until(lambda: fault_store.status(job_id).pending == 0, 120, "the job to complete")
    check_output(fault_settings, fault_store, job_id, path, tiny_model, tmp_path, max_tokens=long_every_twelfth)


AOF = ("--appendonly", "yes", "--appendfsync", "everysec")


@dataclass
class CrashableRedis:
    """A redis-server of this module's own, with an append-only file, that tests may crash and restart."""

    directory: Path
    port: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        self.processes.append(start_redis(self.directory, self.port, *AOF))


@pytest.fixture(scope="module")
def aof_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashableRedis]:
    server = CrashableRedis(tmp_path_factory.mktemp("aof-redis"), free_port())
    server.start()
    yield server
    for process in server.processes:
        stop_process(process)


@pytest.fixture(scope="module")
def aof_settings(aof_redis: CrashableRedis) -> Settings:
    return Settings(redis_url=f"redis://127.0.0.1:{aof_redis.port}/0", key_prefix="aof", shard_max_requests=4)


@pytest.fixture(scope="module")
def aof_worker(aof_settings: Settings, tiny_model: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    process = start_worker(aof_settings, JobStore.connect(aof_settings), tiny_model,
                           tmp_path_factory.mktemp("aof-worker") / "worker.log")
    yield process
    stop_process(process)


def test_redis_crash_and_restart_with_aof_mid_job(aof_redis: CrashableRedis, aof_settings: Settings,
                                                  aof_worker: subprocess.Popen[bytes], tiny_model: Path,
                                                  tmp_path: Path) -> None:
    store = JobStore.connect(aof_settings)
    job_id, path = submit(aof_settings, tiny_model, tmp_path)
    wait_until(lambda: store.status(job_id).done >= 8, 300, "progress")
    os.kill(int(store.client.info("server")["process_id"]), signal.SIGKILL)  # a crash, not a clean shutdown
    time.sleep(2)
    aof_redis.start()
    wait_until(lambda: store.status(job_id).pending == 0, 600, "the job to complete after the restart")
    check_output(aof_settings, store, job_id, path, tiny_model, tmp_path)
    assert aof_worker.poll() is None  # the worker rode out the outage


def test_connections_cut_mid_shard_the_worker_reconnects(aof_settings: Settings,
                                                         aof_worker: subprocess.Popen[bytes], tiny_model: Path,
                                                         tmp_path: Path) -> None:
    store = JobStore.connect(aof_settings)
    job_id, path = submit(aof_settings, tiny_model, tmp_path)
    wait_until(lambda: store.status(job_id).done >= 4, 300, "progress")
    killed = store.client.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    wait_until(lambda: store.status(job_id).pending == 0, 600, "the job to complete after the cut")
    check_output(aof_settings, store, job_id, path, tiny_model, tmp_path)
    assert aof_worker.poll() is None


# One shard at a time per worker, so that the redelivered shard can only go to the other worker.
@pytest.mark.workers(2, visibility_timeout=10, shard_max_requests=ITEMS, shards_in_flight=1)
def test_a_visibility_timeout_shorter_than_a_shard_runs_it_twice_at_once_yet_keeps_one_result(
        fault_settings: Settings, fault_store: JobStore, tiny_model: Path, started: list[subprocess.Popen[bytes]],
        tmp_path: Path) -> None:
    logs = worker_logs(tmp_path, 2)
    # The engines are held from the start, so the first worker's shard outlives the visibility timeout on any
    # machine: Redis hands it to the second worker too; then both run it at once.
    with engines_paused(*map(engine_core, started)):
        job_id, path = submit(fault_settings, tiny_model, tmp_path, max_tokens=lambda _: 256)  # one shard
        wait_until(lambda: claimants(fault_store, fault_settings.key_prefix), 300, "the shard to start")
        wait_until(lambda: len(claimants(fault_store, fault_settings.key_prefix)) == 2, 120, "the second delivery")
    wait_until(lambda: fault_store.status(job_id).pending == 0, 300, "the job to complete")
    done = f"{fault_store.shard_key(job_id, 0)}: {ITEMS} items, 0 already done"
    # Both ran it whole, and between them stored each item's result once.
    wait_until(lambda: all(done in log.read_text() for log in logs), 300, "both workers to finish the shard")
    stored = [int(re.search(re.escape(done) + r", (\d+) stored", log.read_text())[1])  # type: ignore[index]
              for log in logs]
    assert sum(stored) == ITEMS  # first result wins
    check_output(fault_settings, fault_store, job_id, path, tiny_model, tmp_path, max_tokens=lambda _: 256)


@pytest.mark.workers(1, visibility_timeout=10, shard_max_requests=ITEMS)
def test_a_shard_redelivered_to_the_worker_running_it_runs_once(
        fault_settings: Settings, fault_store: JobStore, tiny_model: Path, started: list[subprocess.Popen[bytes]],
        tmp_path: Path) -> None:
    (worker,) = started
    (log,) = worker_logs(tmp_path, 1)
    # The engine is held from the start, so the shard outlives the visibility timeout on any machine: Redis
    # hands it out again, to the same worker's free thread, which drops it.
    with engines_paused(engine_core(worker)):
        job_id, path = submit(fault_settings, tiny_model, tmp_path, max_tokens=lambda _: 256)  # one shard
        shard = fault_store.shard_key(job_id, 0)
        wait_for_log(worker, log, f"{shard}: already running in this worker; dropping the redelivered copy", 120,
                     "the redelivery")
        # Dropped before it claimed the shard: one start so far (the job's keys go once it is finalized).
        assert fault_store.client.hget(f"{fault_store.job_key(job_id)}:attempts", shard) == b"1"
    wait_until(lambda: fault_store.status(job_id).pending == 0, 300, "the job to complete")
    assert log.read_text().count(f"{shard}: {ITEMS} items") == 1  # and it ran once in all
    check_output(fault_settings, fault_store, job_id, path, tiny_model, tmp_path, max_tokens=lambda _: 256)

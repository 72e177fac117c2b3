"""A Redis node crash that loses the tail of its append-only file (``appendfsync everysec``: up to a second or
two) mid-job: the job still completes with every id exactly once.

Simulated exactly: Redis writes its AOF with timestamps; mid-job the test notes the time, lets the worker store
results past it, SIGKILLs redis-server, truncates the AOF to the noted time (``redis-check-aof``) and starts
Redis again on it. The worker rides out the outage; the results, claims, queue pops and shard drops of the lost
tail are gone, and the worker and its housekeeping must run those items again.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dscbatch.core.settings import Settings
from dscbatch.jobs.store import JobStore
from dscbatch.workers.embedded import free_port, start_redis, stop_process

from .conftest import _script, engine_core, engines_paused, start_worker, step_until, wait_until
from .test_faults import ITEMS, check_output, submit

pytestmark = [pytest.mark.faults, pytest.mark.engine, pytest.mark.timeout(600)]
redis_aof = _script("redis_aof")
AOF = redis_aof.AOF
# Within the repair's bound (workers/repair.py: 30 s grace, two looks 10 s apart) with room for a slow machine.
RECOVERY_SECONDS = 300


@pytest.fixture
def redis_servers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The test's redis-server processes (the first, then the one restarted after the crash), stopped after it."""
    servers: list[subprocess.Popen[bytes]] = []
    yield servers
    for server in servers:
        stop_process(server)


def crash(servers: list[subprocess.Popen[bytes]], folder: Path, port: int, noted: int) -> None:
    """SIGKILL redis-server, cut its AOF back to the ``noted`` second, start it again on what is left."""
    servers[-1].send_signal(signal.SIGKILL)
    servers[-1].wait(30)
    redis_aof.truncate(folder, noted)
    servers.append(start_redis(folder, port, *AOF))


@dataclass
class AofCluster:
    folder: Path
    port: int
    settings: Settings
    store: JobStore
    worker: subprocess.Popen[bytes]


@pytest.fixture
def aof_cluster(redis_servers: list[subprocess.Popen[bytes]], tiny_model: Path,
                tmp_path: Path) -> Iterator[AofCluster]:
    """A redis-server writing a timestamped AOF, and one worker on it (started before the test's own time)."""
    folder, port = tmp_path / "redis", free_port()
    folder.mkdir()
    redis_servers.append(start_redis(folder, port, *AOF))
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", key_prefix="aof", shard_max_requests=4,
                        shards_in_flight=2, shutdown_timeout=2)
    store = JobStore.connect(settings)
    worker = start_worker(settings, store, tiny_model, tmp_path / "worker.log")
    yield AofCluster(folder, port, settings, store, worker)
    stop_process(worker)


def test_a_redis_crash_that_loses_the_aof_tail_leaves_no_result_missing(
        aof_cluster: AofCluster, redis_servers: list[subprocess.Popen[bytes]], tiny_model: Path,
        tmp_path: Path) -> None:
    settings, store = aof_cluster.settings, aof_cluster.store
    core = engine_core(aof_cluster.worker)
    with engines_paused(core):
        job_id, path = submit(settings, tiny_model, tmp_path)
        step_until(core, lambda: store.status(job_id).done >= 4, 120, "the first results")
        noted = int(time.time())
        step_until(core, lambda: int(time.time()) > noted, 120, "the next second")
        kept = store.status(job_id).done
        # Results stored after the noted second: what the crash loses.
        step_until(core, lambda: store.status(job_id).done >= kept + 4, 120, "results past the noted second")
        stored = store.status(job_id).done
        assert stored < ITEMS, "the job ended before the crash: nothing would be lost"
        crash(redis_servers, aof_cluster.folder, aof_cluster.port, noted)
        assert store.status(job_id).done <= kept < stored  # the tail's results are gone
    # The engine runs on: the job completes with every id once, the lost results run again.
    wait_until(lambda: store.status(job_id).pending == 0, RECOVERY_SECONDS, "the job to complete")
    check_output(settings, store, job_id, path, tiny_model, tmp_path)
    assert aof_cluster.worker.poll() is None

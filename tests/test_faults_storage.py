"""The work folder's object store failing mid-job: workers retry with backoff, say so, and lose nothing.

Real workers and Redis; the work folder on S3 through s3fs against moto's server, behind a loopback TCP proxy
that the test takes down (every connection refused or cut) and brings back up.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dscbatch.core.settings import Settings
from dscbatch.jobs.store import JobStore

from . import test_faults
from .conftest import _script, engine_core, engines_paused, wait_until
from .test_faults import check_output, submit, wait_for_log, worker_logs

pytestmark = [pytest.mark.faults, pytest.mark.engine, pytest.mark.timeout(600)]
fault_store = test_faults.fault_store
workers = test_faults.workers
started = test_faults.started


OutageProxy = _script("outage_proxy").OutageProxy


@pytest.fixture
def outage_proxy(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[OutageProxy]:
    """The S3 server as the dscbatch processes started after it see it: through the proxy."""
    proxy = OutageProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    yield proxy
    if proxy.server is not None:
        proxy.down()


@pytest.fixture
def fault_settings(redis_url: str, bucket: str, outage_proxy: OutageProxy) -> Settings:
    return Settings(redis_url=redis_url, key_prefix=f"fault-storage-{uuid.uuid4().hex[:8]}", shard_max_requests=4,
                    shutdown_timeout=2, shards_in_flight=2, work_url=f"{bucket}/work")


@pytest.mark.workers(1)
def test_an_object_store_outage_mid_job_is_retried_and_loses_nothing(
        fault_settings: Settings, fault_store: JobStore, outage_proxy: OutageProxy, tiny_model: Path,
        started: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    (worker,) = started
    (log,) = worker_logs(tmp_path, 1)
    store = fault_store
    with engines_paused(engine_core(worker)):
        job_id, path = submit(fault_settings, tiny_model, tmp_path, max_tokens=lambda _: 8)
        outage_proxy.down()  # shard payloads are stored; their reads and every part's write now fail
    wait_for_log(worker, log, "work folder: ", 180, "a failed work-folder call retried")
    assert store.status(job_id).pending > 0
    outage_proxy.up()
    wait_until(lambda: store.status(job_id).pending == 0, 240, "the job to complete after the outage")
    check_output(fault_settings, store, job_id, path, tiny_model, tmp_path, max_tokens=lambda _: 8)
    assert worker.poll() is None
    assert "retrying in" in log.read_text()

"""A waiting command (`submit --wait`, `run`, `eval`) wakes on the job's events, not at its next look: the job
settling, its results file written, a failed write (said at once, not waited out in silence), cancelling."""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest

from dscbatch.cli.progress import wait_for_job, wait_for_results
from dscbatch.core.errors import DscbatchError
from dscbatch.jobs import finalize
from dscbatch.jobs.results import ItemInfo, Output, result_line
from dscbatch.jobs.store import JobStatus, JobStore, ResultEntry
from tests.conftest import wait_until

# Longer than any test here may take: a wait that returns did so on an event.
NEVER = 3600.0


class Waiter(threading.Thread):
    """Runs a wait in a thread; ``subscribed`` is true once it listens on the job's channel."""

    def __init__(self, store: JobStore, job_id: str, wait: Callable[[JobStore, str], JobStatus]) -> None:
        super().__init__(daemon=True)
        self.store, self.job_id, self.wait = store, job_id, wait
        self.status: JobStatus | None = None

    def run(self) -> None:
        self.status = self.wait(self.store, self.job_id)

    def subscribed(self) -> bool:
        channel = self.store.keys.job_events(self.job_id)
        numsub = cast(list[tuple[bytes, int]], self.store.client.pubsub_numsub(channel))
        return numsub[0][1] == 1

    def started_waiting(self) -> Waiter:
        self.start()
        wait_until(self.subscribed, 30, "the waiting command to subscribe to the job's events")
        return self

    def result(self) -> JobStatus:
        self.join(30)
        assert not self.is_alive(), "the wait did not return on the job's event"
        assert self.status is not None
        return self.status


def new_job(store: JobStore, **fields: object) -> str:
    job_id = f"wait-{uuid.uuid4().hex[:8]}"
    store.create_job(job_id, {"model": "m", "queue": "q", "created": time.time(), "total": 1, "shards": 0, **fields})
    return job_id


def store_result(store: JobStore, job_id: str) -> None:
    line = result_line(ItemInfo(0, "item0", "completion", False, None), model="m", job_id=job_id, created=0,
                       outputs=[Output("x", "stop", 1)])
    store.record(job_id, [ResultEntry(0, line, "done")])


def test_a_waiting_command_wakes_when_the_job_settles(store: JobStore) -> None:
    job_id = new_job(store)
    waiter = Waiter(store, job_id, lambda s, j: wait_for_job(s, j, interval=NEVER, stream=io.StringIO()))
    waiter.started_waiting()
    store_result(store, job_id)
    status = waiter.result()
    assert (status.settled, status.done, status.total) == (True, 1, 1)


def test_a_waiting_command_wakes_when_the_job_is_cancelled(store: JobStore) -> None:
    job_id = new_job(store)
    waiter = Waiter(store, job_id, lambda s, j: wait_for_job(s, j, interval=NEVER, stream=io.StringIO()))
    waiter.started_waiting()
    store.cancel(job_id)
    assert waiter.result().cancelled


def test_waiting_for_the_results_file_says_why_a_write_failed_and_ends_when_one_is_written(
        store: JobStore, tmp_path: Path) -> None:
    """The output folder is a file: the worker's write fails; the waiting command says so at once (it used to
    wait without a word) and keeps waiting; once the folder can be written, the next write ends the wait."""
    output = tmp_path / "out"
    output.write_text("not a folder")
    job_id = new_job(store, output_url=str(output))
    store_result(store, job_id)  # settled: it awaits its results file
    said = io.StringIO()
    waiter = Waiter(store, job_id, lambda s, j: wait_for_results(s, j, interval=NEVER, stream=said))
    waiter.started_waiting()
    with pytest.raises(DscbatchError) as caught:
        finalize.finalize(store, job_id, "worker-a")
    failure = str(caught.value)
    wait_until(lambda: "the results file could not be written" in said.getvalue(), 30, "the failure to be said")
    assert failure in said.getvalue() and f"dscbatch status {job_id}" in said.getvalue()
    assert waiter.is_alive()
    output.unlink()
    assert finalize.finalize(store, job_id, "worker-a")
    status = waiter.result()
    assert status.results_url == str(output / "results.jsonl")
    assert said.getvalue().count("could not be written") == 1

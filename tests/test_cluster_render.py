"""Rendering on the cluster (issue 23, ``submit --render cluster``): the workers count and render the input's
byte ranges; the job has the items local rendering gives it, exactly once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dscbatch.core.errors import InvalidInputError, SubmissionCancelledError
from dscbatch.core.settings import Settings
from dscbatch.jobs.clusterrender import run_range_task, submit_on_cluster
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import SubmitOptions
from dscbatch.jobs.tokenizer import ModelTokenizer

from .test_pipeline import dscbatch, read_jsonl


def write_file(path: Path, lines: int = 40, bad: int | None = None) -> Path:
    rows = []
    for n in range(lines):
        row: dict[str, Any] = {"id": f"r{n}", "prompt": f"def f_{n % 6}(x):\n    # step {n}\n",
                               "params": {"max_tokens": 4}}
        rows.append('{"id": "bad", "prompt": 7}' if n == bad else json.dumps(row))
        if n % 9 == 0:
            rows.append("")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_a_job_rendered_on_the_cluster_gives_the_results_of_local_rendering(
        settings: Settings, store: JobStore, worker: Any, tiny_model: Path, tmp_path: Path) -> None:
    path = write_file(tmp_path / "job.jsonl")
    outputs = {}
    for render in ("local", "cluster"):
        folder = tmp_path / render
        submitted = dscbatch(settings, "submit", str(path), "--model", str(tiny_model), "--render", render,
                             "--range-bytes", "300", "--echo-prompt", "--wait", "-o", str(folder))
        job_id = submitted.stdout.split()[-1]
        outputs[render] = read_jsonl(folder / "results.jsonl")
        assert [r["id"] for r in outputs[render]] == [f"r{n}" for n in range(40)]
        status = store.status(job_id)
        assert (status.state, status.total, status.done) == ("completed", 40, 40)
    assert ([r["prompt_token_ids"] for r in outputs["cluster"]] == [r["prompt_token_ids"] for r in outputs["local"]])
    assert [r["outputs"] for r in outputs["cluster"]] == [r["outputs"] for r in outputs["local"]]


class Inline:
    """Render tasks run in this process as they are queued; ``before`` runs first (a fault), shards are
    collected instead of queued."""

    def __init__(self, store: JobStore, model: str, before: Any = None) -> None:
        self.store, self.tokenizer, self.before = store, ModelTokenizer.load(model), before
        self.queued: list[str] = []
        self.calls = 0

    def enqueue(self, queue: str, job_id: str, key: str) -> None:
        self.queued.append(key)

    def render(self, queue: str, job_id: str, number: int, line: int, index: int) -> None:
        self.calls += 1
        if self.before is not None:
            self.before(self, job_id, number, line, index)
        run_range_task(self.store, self.enqueue, self.tokenizer, job_id, number, line, index)


def items_of(store: JobStore, keys: list[str]) -> list[int]:
    payloads = [store.load_shard(key) for key in set(keys)]
    return sorted(item["i"] for payload in payloads if payload is not None for item in payload["items"])


def test_a_range_rendered_again_after_its_worker_died_queues_the_same_shards(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    path = write_file(tmp_path / "job.jsonl")

    def rendered_twice(inline: Inline, job_id: str, number: int, line: int, index: int) -> None:
        if line:  # the first render of each range "dies" after it committed and saved: it runs again in full
            run_range_task(inline.store, lambda *_: None, inline.tokenizer, job_id, number, line, index)

    inline = Inline(private_store, str(deepseek_dir), rendered_twice)
    options = SubmitOptions(model=str(deepseek_dir), shard_max_requests=4)
    job_id = submit_on_cluster(private_store, inline.enqueue, inline.render, str(path), options, range_bytes=250)
    assert items_of(private_store, inline.queued) == list(range(40))  # every item once, in one shard
    status = private_store.status(job_id)
    assert (status.total, status.shards) == (40, len(set(inline.queued)))


def test_an_input_that_changes_after_planning_fails_the_job_in_one_line(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    path = write_file(tmp_path / "job.jsonl")

    def changed(inline: Inline, job_id: str, number: int, line: int, index: int) -> None:
        if inline.calls == 1:
            path.write_text(path.read_text() + json.dumps({"id": "late", "prompt": "x"}) + "\n")

    inline = Inline(private_store, str(deepseek_dir), changed)
    with pytest.raises(InvalidInputError) as raised:
        submit_on_cluster(private_store, inline.enqueue, inline.render, str(path),
                          SubmitOptions(model=str(deepseek_dir)), range_bytes=250)
    assert "the input changed since submit planned it" in str(raised.value)
    assert private_store.job_ids() == [] and inline.queued == []


@pytest.mark.parametrize("validate_first", [False, True])
def test_a_bad_line_on_the_cluster_is_named_and_the_job_leaves_nothing(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path, validate_first: bool) -> None:
    path = write_file(tmp_path / "job.jsonl", bad=37)
    inline = Inline(private_store, str(deepseek_dir))
    with pytest.raises(InvalidInputError) as raised:
        submit_on_cluster(private_store, inline.enqueue, inline.render, str(path),
                          SubmitOptions(model=str(deepseek_dir), validate_first=validate_first), range_bytes=250)
    assert str(raised.value).startswith(f"{path}:43: prompt:"), str(raised.value)  # 5 blank lines before it
    assert private_store.job_ids() == []
    assert not private_store.client.keys(f"{private_store.prefix}:job:*")
    if validate_first:
        assert inline.queued == []


def test_a_cancel_while_the_cluster_renders_stops_the_render_tasks(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    path = write_file(tmp_path / "job.jsonl")

    def cancelled(inline: Inline, job_id: str, number: int, line: int, index: int) -> None:
        if line and number == 1:  # range 0 is rendered; the cancel comes before range 1's task
            private_store.cancel_if_present(job_id)

    inline = Inline(private_store, str(deepseek_dir), cancelled)
    with pytest.raises(SubmissionCancelledError):
        submit_on_cluster(private_store, inline.enqueue, inline.render, str(path),
                          SubmitOptions(model=str(deepseek_dir)), range_bytes=250)
    (job_id,) = private_store.job_ids()
    rendered = items_of(private_store, inline.queued)
    status = private_store.status(job_id)
    assert status.state == "cancelled" and rendered == list(range(len(rendered)))
    assert status.total == len(rendered) > 0  # the lines of the one range rendered before the cancel

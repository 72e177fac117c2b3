"""Rendering on the cluster (issue 23, ``submit --render cluster``): the workers count and render the input's
byte ranges; the job has the items local rendering gives it, exactly once."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dscbatch.core.errors import InvalidInputError, ModelFilesError, RenderTaskError, SubmissionCancelledError
from dscbatch.core.heartbeat_loop import HEARTBEAT_SECONDS, HEARTBEAT_TTL_SECONDS
from dscbatch.core.settings import Settings
from dscbatch.jobs import parts
from dscbatch.jobs.clusterrender import run_range_task, submit_on_cluster
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.store.ranges import MERGE
from dscbatch.jobs.submission import SubmitOptions, submit_job
from dscbatch.jobs.tokenizer import ModelTokenizer
from dscbatch.workers.embedded import free_port, stop_process

from .conftest import start_executor, wait_until, worker_env
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


def test_verify_lines_rendered_on_the_cluster_get_the_verdicts_of_local_rendering(
        settings: Settings, store: JobStore, worker: Any, tiny_model: Path, tmp_path: Path) -> None:
    # Each line's tests pass or fail by the line, whatever the model wrote (its text is read into a raw string):
    # a spec found for another item shows, and one not found leaves its item unverified (the job never settles).
    # Ranges of some three lines: the one spec file of local rendering (1,024 indices) straddles every range.
    path = tmp_path / "job.jsonl"
    rows = [{"id": f"v{n}", "prompt": f"def f_{n % 4}(x):\n", "params": {"max_tokens": 4},
             "verify": {"prompt": '_ = r"""', "tests": f'"""\nassert {n} % 3 != 0\n'}} for n in range(24)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    executor = start_executor(settings, store, tmp_path / "executor.log")
    try:
        verdicts = {}
        for render in ("local", "cluster"):
            folder = tmp_path / render
            submitted = dscbatch(settings, "submit", str(path), "--model", str(tiny_model), "--render", render,
                                 "--range-bytes", "400", "--wait", "-o", str(folder), timeout=300)
            job_id = submitted.stdout.split()[-1]
            status = store.status(job_id)
            assert (status.state, status.total, status.done, status.verified) == ("completed", 24, 24, 24)
            records = read_jsonl(folder / "results.jsonl")
            assert [record["id"] for record in records] == [f"v{n}" for n in range(24)]
            verdicts[render] = [[(verdict["status"], verdict["program"]) for verdict in
                                 record["verification"]["verdicts"]] for record in records]
        assert len(store.range_bases(job_id) or ()) > 3  # the cluster job's ranges
    finally:
        stop_process(executor)
    assert [[status for status, _ in each] for each in verdicts["cluster"]] == [
        ["failed" if n % 3 == 0 else "passed"] for n in range(24)]
    assert verdicts["cluster"] == verdicts["local"]


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
        run_range_task(self.store, self.enqueue, lambda: self.tokenizer, "inline", job_id, number, line, index)


def items_of(store: JobStore, keys: list[str]) -> list[int]:
    payloads = [store.load_shard(key) for key in set(keys)]
    return sorted(item["i"] for payload in payloads if payload is not None for item in payload["items"])


def test_a_range_rendered_again_after_its_worker_died_queues_the_same_shards(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    path = write_file(tmp_path / "job.jsonl")

    def rendered_twice(inline: Inline, job_id: str, number: int, line: int, index: int) -> None:
        if line:  # the first render (or merge) of each range "dies" after it committed and saved: it runs again
            run_range_task(inline.store, lambda *_: None, lambda: inline.tokenizer, "inline", job_id, number, line,
                           index)

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


@pytest.mark.parametrize("before", ["render", "merge"])
def test_a_cancel_while_the_cluster_renders_stops_the_render_tasks_and_removes_the_job(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path, before: str) -> None:
    path = write_file(tmp_path / "job.jsonl")

    def cancelled(inline: Inline, job_id: str, number: int, line: int, index: int) -> None:
        # Range 0 is rendered (or partition 0 merged, its shards queued); the cancel comes before the next task.
        if number == 1 and line == (MERGE if before == "merge" else line or -2):
            private_store.cancel_if_present(job_id)

    inline = Inline(private_store, str(deepseek_dir), cancelled)
    jobs = Path(private_store.work.root) / "jobs"
    folders = set(jobs.iterdir()) if jobs.exists() else set()
    with pytest.raises(SubmissionCancelledError):
        submit_on_cluster(private_store, inline.enqueue, inline.render, str(path),
                          SubmitOptions(model=str(deepseek_dir)), range_bytes=250)
    assert private_store.job_ids() == [] and not private_store.client.keys(f"{private_store.prefix}:job:*")
    assert (set(jobs.iterdir()) if jobs.exists() else set()) == folders
    assert bool(inline.queued) == (before == "merge")  # no shard is queued before the merges


def start_render_worker(settings: Settings, store: JobStore, model: Path, log: Path,
                        *args: str) -> subprocess.Popen[bytes]:
    """A real ``dscbatch worker --render-only`` process, returned once its heartbeat is in Redis."""
    with log.open("wb") as stream:
        process = subprocess.Popen([sys.executable, "-m", "dscbatch.cli.main", "worker", "--render-only", "--model",
                                    str(model), *args], stdout=stream, stderr=subprocess.STDOUT,
                                   env=worker_env(settings), start_new_session=True)
    wait_until(lambda: any(name.endswith(f"-{process.pid}") for name in store.workers(render_only=True))
               or process.poll() is not None, 60, "the render worker's heartbeat")
    assert process.poll() is None, log.read_text()[-3000:]
    return process


def job_items(store: JobStore, job_id: str) -> dict[int, Any]:
    """Every item of the job's saved shards, by index; an item in two shards fails."""
    items: dict[int, Any] = {}
    for number in range(store.status(job_id).shards):
        payload = store.load_shard(store.shard_key(job_id, number))
        assert payload is not None, number
        for item in payload["items"]:
            assert item["i"] not in items, f"item {item['i']} is in two shards"
            items[item["i"]] = item
    return items


def write_numbered(path: Path, lines: int) -> Path:
    """A file of ``lines`` short functions (50 distinct prefixes): seconds of a render worker's time per 5,000."""
    path.write_text("".join(json.dumps({"id": f"r{n}", "prompt": f"def f_{n % 50}(x):\n    return x * {n}\n"}) + "\n"
                            for n in range(lines)))
    return path


def submit_when_rendering(settings: Settings, store: JobStore, path: Path, model: Path, range_bytes: int,
                          render_worker: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    """``submit --render cluster`` of ``path``, returned once ``render_worker`` claims one of its ranges to render
    (not a task an earlier test's failed job left on the queue: the worker claims and drops those at once)."""
    submit = subprocess.Popen([sys.executable, "-m", "dscbatch.cli.main", "submit", str(path), "--model", str(model),
                               "--render", "cluster", "--range-bytes", str(range_bytes)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=worker_env(settings))

    def rendering() -> bool:
        for field, job_id in store.client.hgetall(store.keys.render_claims).items():
            worker, task = json.loads(field)
            if worker.endswith(f"-{render_worker.pid}") and ":render:" in task:
                plan = store.render_plan(job_id.decode())
                if plan is not None and plan["input"].endswith(str(path)):
                    return True
        return False

    deadline = time.monotonic() + 120
    while not rendering():
        if time.monotonic() > deadline or submit.poll() is not None:
            stop_all(submit)
            raise AssertionError("no range was claimed for rendering")
        time.sleep(0.005)
    return submit


def stop_all(*processes: subprocess.Popen[bytes] | None) -> None:
    """Kill the processes still running and close their pipes."""
    for process in processes:
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.communicate()


def test_a_render_worker_killed_mid_range_has_its_range_rendered_again_with_no_line_lost_or_twice(
        settings: Settings, store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    # Ranges of some 5,000 lines, each a second or so of a render worker's time: the worker is SIGKILLed as soon
    # as it claims its first range to render. A second render worker's heartbeat finds the dead claim once the
    # first worker's heartbeat expires and puts its task back (and the ranges the dead one had taken from the
    # queue without claiming them); submit then ends with every line in exactly one shard, as rendered locally.
    # No engine serves this model's queue: the shards stay saved for the test to read.
    lines = 15_000
    path = write_numbered(tmp_path / "job.jsonl", lines)
    first = start_render_worker(settings, store, deepseek_dir, tmp_path / "render1.log")
    second = submit = None
    try:
        submit = submit_when_rendering(settings, store, path, deepseek_dir, path.stat().st_size // 3 + 1, first)
        first.kill()
        first.wait()
        port = free_port()
        second = start_render_worker(settings, store, deepseek_dir, tmp_path / "render2.log", "--metrics-port",
                                     str(port))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as health:
            assert health.status == 200  # its heartbeat is fresh
        out, err = submit.communicate(timeout=3 * (HEARTBEAT_TTL_SECONDS + HEARTBEAT_SECONDS + 20))
        assert submit.returncode == 0, err.decode()
    finally:
        stop_all(first, second, submit)
    job_id = out.decode().split()[-1]
    assert "queueing its render task" in (tmp_path / "render2.log").read_text()
    status = store.status(job_id)
    assert status.total == lines
    cluster = job_items(store, job_id)
    local = dscbatch(settings, "submit", str(path), "--model", str(deepseek_dir)).stdout.split()[-1]
    assert sorted(cluster) == list(range(lines))
    assert cluster == job_items(store, local)
    for each in (job_id, local):
        dscbatch(settings, "cancel", each)
        dscbatch(settings, "delete", each)


@pytest.mark.parametrize("validate_first", [False, True])
def test_an_id_used_in_two_ranges_is_named_as_local_rendering_names_it_and_the_job_leaves_nothing(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path, validate_first: bool) -> None:
    path = tmp_path / "job.jsonl"
    rows = [{"id": f"r{n}", "prompt": f"def f_{n}(x):\n"} for n in range(40)]
    rows[30]["id"] = rows[33]["id"] = "r3"  # line 4 first; 31 and 34 in later ranges
    rows[35] = {"custom_id": "r5", "method": "POST", "url": "/v1/completions",
                "body": {"model": "m", "prompt": "x"}}  # an OpenAI line's custom_id
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    local = dscbatch_render_problems(path, deepseek_dir)
    inline = Inline(private_store, str(deepseek_dir))
    jobs = Path(private_store.work.root) / "jobs"
    before = set(jobs.iterdir()) if jobs.exists() else set()
    with pytest.raises(InvalidInputError) as raised:
        submit_on_cluster(private_store, inline.enqueue, inline.render, str(path),
                          SubmitOptions(model=str(deepseek_dir), validate_first=validate_first), range_bytes=250)
    assert raised.value.problems == local == [
        f'{path}:31: id: duplicate id "r3" (first used on line 4)',
        f'{path}:34: id: duplicate id "r3" (first used on line 4)',
        f'{path}:36: custom_id: duplicate id "r5" (first used on line 6)']
    assert private_store.job_ids() == [] and not private_store.client.keys(f"{private_store.prefix}:job:*")
    assert (set(jobs.iterdir()) if jobs.exists() else set()) == before  # its shards and id runs are deleted
    if validate_first:
        assert inline.queued == []


def dscbatch_render_problems(path: Path, model: Path) -> list[str]:
    """The problems local rendering finds in the file (``dscbatch render``'s refusal)."""
    done = subprocess.run([sys.executable, "-m", "dscbatch.cli.main", "render", str(path), "--model", str(model)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr
    return [line.removeprefix("error: ") for line in done.stderr.splitlines() if ": duplicate id" in line]


def test_a_parquet_input_is_rendered_on_the_cluster_by_row_groups_as_locally(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "job.parquet"
    rows = [{"id": f"r{n}", "prompt": f"def f_{n % 6}(x):\n    # step {n}\n"} for n in range(50)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)  # 8 row groups
    inline = Inline(private_store, str(deepseek_dir))
    options = SubmitOptions(model=str(deepseek_dir), shard_max_requests=4)
    job_id = submit_on_cluster(private_store, inline.enqueue, inline.render, str(path), options, range_bytes=1)
    assert inline.calls == 24  # each row group a range (each over 1 byte): counted, rendered, then merged
    local = dscbatch_submit_local(private_store, path, deepseek_dir)
    assert private_store.status(job_id).total == 50
    assert job_items(private_store, job_id) == job_items(private_store, local)

    rows[44]["params"] = {"max_tokens": -1}  # a bad row in the last row group but one: named as locally
    schema = pa.schema([("id", pa.string()), ("prompt", pa.string()),
                        ("params", pa.struct([("max_tokens", pa.int64())]))])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=7)
    with pytest.raises(InvalidInputError) as locally:
        dscbatch_submit_local(private_store, path, deepseek_dir)
    with pytest.raises(InvalidInputError) as raised:
        submit_on_cluster(private_store, inline.enqueue, inline.render, str(path), options, range_bytes=1)
    assert raised.value.problems == locally.value.problems
    assert raised.value.problems[0].startswith(f"{path}:45: params.max_tokens: ")


def dscbatch_submit_local(store: JobStore, path: Path, model: Path, shard_max_requests: int = 4) -> str:
    """The id of a job of ``path`` rendered locally into ``store``'s Redis (its shards saved, queued for no one)."""
    return submit_job(store, lambda *_: None, str(path), SubmitOptions(model=str(model),
                                                                       shard_max_requests=shard_max_requests))


def test_skip_invalid_on_the_cluster_stores_each_bad_lines_error_record_once_as_locally(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    # Bad lines in several ranges (a malformed line, a wrong type, a prompt over the context); every range is
    # rendered twice, as when its worker died after storing its error records: each is stored once.
    path = write_file(tmp_path / "job.jsonl", bad=12)
    text = path.read_text().splitlines()
    text[30] = "{not json"
    text[40] = json.dumps({"id": "long", "prompt": "x " * 70_000})
    path.write_text("\n".join(text) + "\n")
    options = SubmitOptions(model=str(deepseek_dir), shard_max_requests=4, skip_invalid=True)

    def rendered_twice(inline: Inline, job_id: str, number: int, line: int, index: int) -> None:
        if line:
            run_range_task(inline.store, lambda *_: None, lambda: inline.tokenizer, "inline", job_id, number, line,
                           index)

    inline = Inline(private_store, str(deepseek_dir), rendered_twice)
    job_id = submit_on_cluster(private_store, inline.enqueue, inline.render, str(path), options, range_bytes=250)
    local = submit_job(private_store, lambda *_: None, str(path), options)
    cluster_status, local_status = private_store.status(job_id), private_store.status(local)
    assert (cluster_status.total, cluster_status.failed) == (local_status.total, local_status.failed) == (40, 3)
    assert job_items(private_store, job_id) == job_items(private_store, local)

    def error_records(job: str) -> list[Any]:
        records = sorted((index, json.loads(line)) for entry in private_store.part_entries(job)
                         for index, line in parts.decode(private_store.work.part(job, entry.name),
                                                         private_store.work.read(private_store.work.part(job,
                                                                                                         entry.name))))
        return [(index, record["id"], record["error"]) for index, record in records]

    assert [(index, record_id, error["code"]) for index, record_id, error in error_records(job_id)] == [
        (12, "bad", "invalid_request"), (27, "31", "invalid_request"), (36, "long", "prompt_too_long")]
    assert error_records(job_id) == error_records(local)
    assert cluster_status.options["invalid_lines"] == local_status.options["invalid_lines"] == 2  # not requests


def test_siblings_in_different_ranges_meet_in_one_shard_as_locally(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    # Four repository contexts of some 300 tokens, five requests each, interleaved so that every range of 400
    # bytes holds about one request of each: the merge of each partition's runs brings each context's requests
    # into one shard, as the local sort does.
    contexts = [f"# repo {c}\n" + "".join(f"def helper_{c}_{k}(x):\n    return x + {k}\n" for k in range(30))
                for c in range(4)]
    rows = [{"id": f"c{c}-{n}", "prompt": contexts[c] + f"def task_{n}():\n"} for n in range(5) for c in range(4)]
    path = tmp_path / "job.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    options = SubmitOptions(model=str(deepseek_dir), shard_max_requests=8)
    inline = Inline(private_store, str(deepseek_dir))
    job_id = submit_on_cluster(private_store, inline.enqueue, inline.render, str(path), options,
                               range_bytes=path.stat().st_size // 5)
    local = dscbatch_submit_local(private_store, path, deepseek_dir, 8)
    for job in (job_id, local):
        shards = [{item["id"].split("-")[0] for item in private_store.load_shard(private_store.shard_key(job, n))
                   ["items"]} for n in range(private_store.status(job).shards)]
        assert sorted(shards, key=sorted) == [{"c0"}, {"c1"}, {"c2"}, {"c3"}], job  # a context per shard
    assert job_items(private_store, job_id) == job_items(private_store, local)


def test_a_render_task_that_fails_with_dscbatchs_own_error_fails_the_job_at_once_in_one_line(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    path = write_file(tmp_path / "job.jsonl")

    def no_tokenizer() -> ModelTokenizer:
        raise ModelFilesError("/models/m: no tokenizer.json in the model directory")

    def render(queue: str, job_id: str, number: int, line: int, index: int) -> None:
        # As in a worker: the task's error is logged there, the submitter learns of it through Redis.
        with contextlib.suppress(ModelFilesError):
            run_range_task(private_store, lambda *_: None, no_tokenizer, "render.m@host-1", job_id, number, line,
                           index)

    options = SubmitOptions(model=str(deepseek_dir), shard_max_requests=4)
    with pytest.raises(RenderTaskError) as raised:
        submit_on_cluster(private_store, lambda *_: None, render, str(path), options, range_bytes=250)
    assert re.fullmatch(r"render task \S+:render:0 failed 1 time \(last on render\.m@host-1\): ModelFilesError: "
                        r"/models/m: no tokenizer\.json in the model directory", str(raised.value)), str(raised.value)
    assert private_store.job_ids() == []  # nothing of the job is left


@pytest.mark.parametrize("fails", [2, 3])
def test_a_render_task_that_fails_otherwise_is_run_again_and_fails_the_job_on_its_third_failure(
        private_store: JobStore, deepseek_dir: Path, tmp_path: Path, fails: int) -> None:
    path = write_file(tmp_path / "job.jsonl")
    tokenizer = ModelTokenizer.load(str(deepseek_dir))
    failures = 0

    def flaky() -> ModelTokenizer:
        nonlocal failures
        if failures < fails:
            failures += 1
            raise OSError("connection reset by peer")
        return tokenizer

    def render(queue: str, job_id: str, number: int, line: int, index: int) -> None:
        # Run again after each failure, as a live worker's heartbeat queues it again.
        for _ in range(fails + 1):
            try:
                run_range_task(private_store, lambda *_: None, flaky, "render.m@host-1", job_id, number, line, index)
                return
            except OSError:
                if private_store.range_state(job_id).failures()[f"{job_id}:render:{number}"][0] >= 3:
                    return

    options = SubmitOptions(model=str(deepseek_dir), shard_max_requests=4)
    if fails < 3:
        job_id = submit_on_cluster(private_store, lambda *_: None, render, str(path), options, range_bytes=250)
        assert private_store.status(job_id).total == 40
        return
    with pytest.raises(RenderTaskError) as raised:
        submit_on_cluster(private_store, lambda *_: None, render, str(path), options, range_bytes=250)
    assert re.fullmatch(r"render task \S+:render:0 failed 3 times \(last on render\.m@host-1\): OSError: connection "
                        r"reset by peer", str(raised.value)), str(raised.value)
    assert private_store.job_ids() == []


def test_submit_names_the_error_of_a_render_worker_that_cannot_render(
        settings: Settings, store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    # A render worker whose model folder (named as the model: it serves the model's queue) has no tokenizer.
    model = tmp_path / deepseek_dir.name
    model.mkdir()
    path = write_file(tmp_path / "job.jsonl")
    render = start_render_worker(settings, store, model, tmp_path / "render.log")
    try:
        submitted = subprocess.run([sys.executable, "-m", "dscbatch.cli.main", "submit", str(path), "--model",
                                    str(deepseek_dir), "--render", "cluster", "--range-bytes", "300"],
                                   capture_output=True, text=True, env=worker_env(settings), timeout=120)
    finally:
        stop_process(render)
    last = submitted.stderr.strip().splitlines()[-1]
    assert submitted.returncode == 1
    assert re.fullmatch(rf"error: render task \S+:render:\d+ failed 1 time \(last on render\.{deepseek_dir.name}@"
                        rf"\S+-{render.pid}\): ModelFilesError: {re.escape(str(model))}: no tokenizer\.json in the "
                        "model directory", last), last


def test_a_render_worker_told_to_stop_puts_its_task_back_at_once_and_another_renders_it(
        settings: Settings, store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    # SIGTERM (as Kubernetes scales a render pool down) lands as soon as the first worker claims a range to render
    # (some 15,000 lines: seconds of its time). It stops between chunks, puts the task back on the queue and exits;
    # a second worker renders it, with no wait for a heartbeat to expire. Every line ends in exactly one shard.
    lines = 30_000
    path = write_numbered(tmp_path / "job.jsonl", lines)
    first = start_render_worker(settings, store, deepseek_dir, tmp_path / "render1.log")
    second = submit = None
    try:
        submit = submit_when_rendering(settings, store, path, deepseek_dir, path.stat().st_size // 2 + 1, first)
        first.send_signal(signal.SIGTERM)
        assert first.wait(60) == 0
        log = (tmp_path / "render1.log").read_text()
        assert re.search(r"render task \S+:render:\d+ stopped after \d+ items of range \d+: this worker shuts down; "
                         r"the task goes back on the queue", log), log[-3000:]
        second = start_render_worker(settings, store, deepseek_dir, tmp_path / "render2.log")
        out, err = submit.communicate(timeout=HEARTBEAT_TTL_SECONDS)  # within a heartbeat's expiry: no reaper
        assert submit.returncode == 0, err.decode()
    finally:
        stop_all(first, second, submit)
    job_id = out.decode().split()[-1]
    assert "queueing its render task" not in (tmp_path / "render2.log").read_text()
    assert sorted(job_items(store, job_id)) == list(range(lines))
    dscbatch(settings, "cancel", job_id)
    dscbatch(settings, "delete", job_id)

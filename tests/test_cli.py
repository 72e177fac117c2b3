"""The command line without an engine: settings, errors as one line, exit codes, render, submit into Redis."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dscbatch.cli.progress import progress_line
from dscbatch.core.celery_app import make_app, require_json_only
from dscbatch.core.errors import SettingsError
from dscbatch.core.settings import Settings
from dscbatch.jobs.store import JobStatus, JobStore

from .conftest import ROOT, worker_env

EXAMPLES = ROOT / "examples" / "prompts.jsonl"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dscbatch.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_render_prints_ids_for_every_line(deepseek_dir: Path) -> None:
    result = cli("render", str(EXAMPLES), "--model", str(deepseek_dir))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in records] == ["complete-fib", "fim-add", "chat-quicksort", "chat-rust", "repo-train",
                                          "openai-completion", "openai-chat"]
    bos = records[0]["prompt_token_ids"][0]
    assert all(r["prompt_token_ids"].count(bos) == 1 and r["prompt"].startswith("<｜begin▁of▁sentence｜>")
               for r in records)


def test_render_refuses_invalid_input_with_exit_2(deepseek_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 1}\n')
    result = cli("render", str(bad), "--model", str(deepseek_dir))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[0] == f"{bad}:2: prompt: Input should be a valid string"
    assert "Traceback" not in result.stderr


def test_skip_invalid_turns_bad_lines_into_errors(deepseek_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 1}\n')
    result = cli("render", str(bad), "--model", str(deepseek_dir), "--skip-invalid")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 0 and [r["id"] for r in records] == ["1", "2"]
    assert records[1]["error"]["code"] == "invalid_request"


def test_unreachable_redis_is_one_line_without_the_password(deepseek_dir: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DSCBATCH_REDIS_URL": "redis://:s3cret@127.0.0.1:1/0"}
    result = cli("submit", str(EXAMPLES), "--model", str(deepseek_dir), env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach Redis at redis://***@127.0.0.1:1/0")
    assert len(result.stderr.strip().splitlines()) == 1 and "s3cret" not in result.stderr


def test_misspelt_setting_is_an_error() -> None:
    with pytest.raises(SettingsError, match="unknown setting DSCBATCH_REDIS_UR "):
        Settings.from_env({"DSCBATCH_REDIS_UR": "redis://x"})
    with pytest.raises(SettingsError, match="DSCBATCH_REDIS_URL: expected a redis:// or rediss:// URL"):
        Settings.from_env({"DSCBATCH_REDIS_URL": "http://x"})
    assert Settings.from_env({"DSCBATCH_VISIBILITY_TIMEOUT": "7200"}).visibility_timeout == 7200


def test_worker_refuses_pickle(settings: Settings) -> None:
    app = make_app(settings)
    require_json_only(app)
    app.conf.accept_content = ["json", "pickle"]
    with pytest.raises(SettingsError, match="refusing to start: the worker would accept pickle"):
        require_json_only(app)


def test_submit_refuses_invalid_input_and_creates_no_job(settings: Settings, store: JobStore, deepseek_dir: Path,
                                                         tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"id": "1", "prompt": "dup"}\n')
    before = store.job_ids()
    result = cli("submit", str(bad), "--model", str(deepseek_dir), env=worker_env(settings))
    assert result.returncode == 2
    assert f'{bad}:2: id: duplicate id "1" (first used on line 1)' in result.stderr
    assert store.job_ids() == before


def test_submit_stores_compressed_shards_and_queues_them(settings: Settings, store: JobStore, deepseek_dir: Path,
                                                        tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"def f{i}():"}) + "\n" for i in range(10)))
    queue = f"{settings.key_prefix}.{deepseek_dir.name}"  # the model is named by its folder
    store.client.delete(queue)
    result = cli("submit", str(prompts), "--model", str(deepseek_dir), "-p", "max_tokens=8", env=worker_env(settings))
    assert result.returncode == 0, result.stderr
    job = store.status(result.stdout.split()[-1])
    assert (job.total, job.shards, job.state, job.queue) == (10, 3, "queued", queue)  # shards of 4
    assert store.client.llen(queue) == 3
    message = json.loads(store.client.lindex(queue, 0))
    assert message["headers"]["task"] == "dscbatch.run_shard" and message["content-type"] == "application/json"
    shard = store.load_shard(store.shard_key(job.id, 0))
    assert shard is not None and [item["id"] for item in shard["items"]] == ["1", "2", "3", "4"]
    assert shard["items"][0]["params"]["max_tokens"] == 8
    store.client.delete(queue)


def test_bad_param_is_named(deepseek_dir: Path) -> None:
    result = cli("render", str(EXAMPLES), "--model", str(deepseek_dir), "-p", "max_tokenz=3")
    assert result.returncode == 2 and result.stderr.strip() == "error: --param max_tokenz: unknown parameter"


def test_progress_line_shows_a_speed_only_for_what_it_watched() -> None:
    first = JobStatus(id="j", model="m", queue="q", input="in.jsonl", sha256="", created=0.0, finished=None, total=10,
                      done=4, failed=0, prompt_tokens=0, completion_tokens=40, cached_prompt_tokens=0, shards=1,
                      cancelled=False)
    later = dataclasses.replace(first, done=8, completion_tokens=120)
    assert progress_line(later, first, 2.0) == ("[###################.....] 8/10 items  80%  2.0 items/s  40.0 tok/s  "
                                                "ETA 0:00:01  failed 0")
    # A job that ended before the command first looked (a small job under `dscbatch run`): no "0.0 items/s".
    ended = dataclasses.replace(first, done=9, failed=1, finished=1.0)
    assert progress_line(ended, ended, 0.5) == "[########################] 10/10 items 100%  failed 1"
    # While the file is still read, the total is the lines read so far, and the ETA a lower bound.
    reading = dataclasses.replace(later, submitting=True)
    assert progress_line(reading, first, 2.0) == ("[###################.....] 8/10+ items  80%  2.0 items/s  "
                                                  "40.0 tok/s  ETA >0:00:01  failed 0")

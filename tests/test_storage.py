"""Inputs and outputs at any fsspec URL (S3 through s3fs against moto's real S3 API server) and in Parquet."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dscbatch.core.errors import StorageError
from dscbatch.core.settings import Settings
from dscbatch.jobs import finalize, objectstore, parquet
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import SubmitOptions, submit_job

from .conftest import worker_env
from .test_cli import EXAMPLES, cli

LINES = [
    {"id": "c1", "prompt": "def fib(n):\n", "params": {"max_tokens": 16}},
    {"id": "f1", "type": "fim", "prefix": "def add(a, b):\n    ", "suffix": "\n"},
    {"id": "h1", "messages": [{"role": "system", "content": "Answer in Rust."}, {"role": "user", "content": "Hi"}],
     "metadata": {"source": "parquet"}},
]


def s3() -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("s3", skip_instance_cache=True)


def upload(url: str, data: bytes) -> str:
    with s3().open(url, "wb") as stream:
        stream.write(data)
    return url


def rendered(path: str, deepseek_dir: Path) -> list[dict[str, object]]:
    result = cli("render", path, "--model", str(deepseek_dir))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_an_s3_input_renders_and_submits_as_the_local_file_does(settings: Settings, store: JobStore, bucket: str,
                                                               deepseek_dir: Path) -> None:
    url = upload(f"{bucket}/in/prompts.jsonl", EXAMPLES.read_bytes())
    assert rendered(url, deepseek_dir) == rendered(str(EXAMPLES), deepseek_dir)
    queue = f"{settings.key_prefix}.{deepseek_dir.name}"
    try:
        submitted = cli("submit", url, "--model", str(deepseek_dir), env=worker_env(settings))
        assert submitted.returncode == 0, submitted.stderr
        job = store.status(submitted.stdout.split()[-1])
        assert (job.input, job.total, job.sha256) == (url, 7, hashlib.sha256(EXAMPLES.read_bytes()).hexdigest())
    finally:
        store.client.delete(queue)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def test_a_parquet_input_reads_as_the_same_jsonl_lines(bucket: str, deepseek_dir: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in LINES))
    local = tmp_path / "in.parquet"
    columns = list(dict.fromkeys(key for line in LINES for key in line))
    # A column per field, null where a row does not have it.
    pq.write_table(pa.Table.from_pylist([{key: line.get(key) for key in columns} for line in LINES]), local)
    expected = rendered(str(jsonl), deepseek_dir)
    assert rendered(str(local), deepseek_dir) == expected
    assert rendered(upload(f"{bucket}/in.parquet", local.read_bytes()), deepseek_dir) == expected


def test_a_bad_parquet_row_is_named_like_a_bad_jsonl_line(deepseek_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}]), path)
    result = cli("render", str(path), "--model", str(deepseek_dir))
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == f'{path}:2: id: duplicate id "a" (first used on line 1)'


@pytest.mark.parametrize("case", ["missing bucket", "missing key", "unreachable", "parquet column type",
                                  "parquet unknown column", "not parquet", "missing local file"])
def test_bad_input_is_one_line_exit_2_and_nothing_in_redis(case: str, settings: Settings, store: JobStore,
                                                           bucket: str, deepseek_dir: Path, tmp_path: Path) -> None:
    if case == "missing bucket":
        url, message = "s3://no-such-bucket-here/in.jsonl", "no such file or bucket"
    elif case == "missing key":
        url, message = f"{bucket}/nothing.jsonl", "no such file or bucket"
    elif case == "unreachable":
        url, message = "http://127.0.0.1:9/in.jsonl", "cannot connect: Cannot connect to host 127.0.0.1:9"
    elif case == "parquet column type":
        url = upload(f"{bucket}/in.parquet", parquet_bytes(pa.table({"id": ["a"], "prompt": [3]})))
        message = "column 'prompt' is int64, expected a string"
    elif case == "parquet unknown column":
        url = upload(f"{bucket}/in.parquet", parquet_bytes(pa.table({"prompt": ["a"], "prompts": ["b"]})))
        message = "unknown column 'prompts' (columns are named like the JSONL fields: id, type,"
    elif case == "not parquet":
        url = upload(f"{bucket}/in.parquet", b'{"prompt": "a"}\n')
        message = "not a Parquet file"
    else:
        url, message = str(tmp_path / "missing.jsonl"), "no such file"
    jobs, keys = store.job_ids(), lasting_keys(store)
    result = cli("submit", url, "--model", str(deepseek_dir), env=worker_env(settings))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {url}: {message}") and len(result.stderr.splitlines()) == 1
    assert store.job_ids() == jobs and lasting_keys(store) == keys


def lasting_keys(store: JobStore) -> set[bytes]:
    """Every key without an expiry but the repair's bookkeeping: what a submission would leave. The session's
    worker sets and drops its heartbeat and its housekeeping's locks (they expire) meanwhile."""
    return {key for key in store.client.scan_iter(count=1000)
            if store.client.ttl(key) == -1 and not key.endswith(b":suspects")}


def test_submit_of_a_missing_file_says_so_before_reaching_redis(tmp_path: Path, deepseek_dir: Path) -> None:
    env = worker_env(Settings(redis_url="redis://127.0.0.1:9/0"))  # nothing listens there
    result = cli("submit", str(tmp_path / "missing.jsonl"), "--model", str(deepseek_dir), env=env)
    assert (result.returncode, result.stderr) == (2, f"error: {tmp_path / 'missing.jsonl'}: no such file\n")


def test_results_files_to_s3_and_as_parquet(private_settings: Settings, private_store: JobStore, bucket: str,
                                            deepseek_dir: Path, tmp_path: Path) -> None:
    settings, store = private_settings, private_store
    path = tmp_path / "invalid.jsonl"
    path.write_text('{"id": "x1", "prompt": 1, "metadata": {"k": [1]}}\n'
                    '{"custom_id": "o1", "method": "POST", "url": "/v1/completions", "body": {"prompt": 2}}\n')
    job_id = submit_job(store, lambda queue, job, key: None, path,
                        SubmitOptions(model=str(deepseek_dir), skip_invalid=True, output_root=f"{bucket}/jobs"))
    assert finalize.finalize(store, job_id, "test")  # as a worker's housekeeping does
    results_url = f"{bucket}/jobs/{job_id}/results.jsonl"
    assert store.status(job_id).results_url == results_url
    lines = s3().cat(results_url).decode().splitlines()
    assert [json.loads(line).get("custom_id") or json.loads(line)["id"] for line in lines] == ["x1", "o1"]
    copied = cli("results", job_id, "-o", f"{bucket}/copy.jsonl", env=worker_env(settings))
    assert copied.returncode == 0, copied.stderr
    assert s3().cat(f"{bucket}/copy.jsonl").decode().splitlines() == lines
    mixed = cli("results", job_id, "-o", str(tmp_path / "out.parquet"), env=worker_env(settings))
    assert mixed.returncode == 2 and "mixes native and OpenAI batch lines: write it as JSONL" in mixed.stderr
    assert not (tmp_path / "out.parquet").exists()


def test_results_as_parquet_have_the_jsonl_fields_as_columns(settings: Settings, store: JobStore,
                                                            deepseek_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "invalid.jsonl"
    path.write_text('{"id": "x1", "prompt": 1}\n{"id": "x2", "prompt": 2}\n')
    job_id = submit_job(store, lambda queue, job, key: None, path,
                        SubmitOptions(model=str(deepseek_dir), skip_invalid=True))
    out = tmp_path / "out.parquet"
    written = cli("results", job_id, "-o", str(out), env=worker_env(settings))
    assert written.returncode == 0, written.stderr
    rows = pq.read_table(out).to_pylist()
    assert [(row["id"], row["error"]["code"], row["outputs"]) for row in rows] == [
        ("x1", "invalid_request", []), ("x2", "invalid_request", [])]


def test_a_result_field_parquet_has_no_column_for_is_an_error_not_dropped(tmp_path: Path) -> None:
    line = {"id": "a", "type": "completion", "outputs": [{"text": "x", "finish_reason": "stop",
                                                          "completion_tokens": 1, "entropy": 0.5}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "cached_prompt_tokens": 0}, "model": "m",
            "metadata": None, "error": None}
    out = tmp_path / "out.parquet"
    with pytest.raises(StorageError, match=r"result line 1 has a field Parquet results have no column for: "
                                           r"outputs\[\]\.entropy \(write it as JSONL\)"):
        parquet.write_lines([json.dumps(line)], str(out))
    assert not out.exists()
    del line["outputs"][0]["entropy"]
    assert parquet.write_lines([json.dumps(line)], str(out)) == 1
    assert list(parquet.read_records(str(out))) == [line]


def test_a_writer_killed_mid_write_leaves_nothing_at_the_name_and_its_leftover_can_be_removed(tmp_path: Path) -> None:
    target = tmp_path / "out" / "part.screening"
    script = ("import os, signal, sys\nfrom dscbatch.jobs import objectstore\n"
              "with objectstore.write_atomic(sys.argv[1]) as stream:\n"
              "    stream.write(b'half')\n    stream.flush()\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", script, str(target)], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert not target.exists()
    assert [p.read_bytes() for p in target.parent.glob(".part.screening.*.partial")] == [b"half"]
    (target.parent / ".other.screening.0123.partial").write_bytes(b"not ours")
    objectstore.delete_staging(str(target))
    assert sorted(p.name for p in target.parent.iterdir()) == [".other.screening.0123.partial"]
    objectstore.delete_staging(str(target))  # nothing left to remove is not an error

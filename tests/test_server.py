"""The Batch API without an engine: files, keys, ownership, refusals, cancel, expiry and pagination, driven by
the real ``openai`` SDK against a running ``dscbatch serve`` on real Redis.

Batches here name a model no worker serves, so they stay ``in_progress`` until the test cancels or expires them.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from dscbatch.jobs.store import JobStore
from dscbatch.server.keys import ApiKeys

from .batch_api import (
    MAX_FILE_BYTES,
    Server,
    chat_line,
    completion_line,
    file_lines,
    jsonl,
    keys,
    server,
    wait_for,
)
from .conftest import worker_env

__all__ = ["keys", "server"]  # fixtures


def queued(store: JobStore) -> tuple[list[str], int]:
    """Every job id, and the shards waiting on every queue."""
    queues = [key for key in store.client.scan_iter("dsctest.*") if store.client.type(key) == b"list"]
    return store.job_ids(), sum(int(store.client.llen(queue)) for queue in queues)


def chunked_upload(server: Server, key: str, size: int) -> tuple[int, Any]:
    """Upload a file of about ``size`` bytes with chunked transfer encoding, so the server cannot know its size
    before counting it."""
    host, port = server.base_url.removeprefix("http://").removesuffix("/v1").split(":")
    boundary = "dscbatchboundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n").encode()
    line = b'{"a": 1}\n'
    count = size // len(line) + 1
    content = line * count
    body = [head, *(content[i:i + 65536] for i in range(0, len(content), 65536)), f"\r\n--{boundary}--\r\n".encode()]
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("POST", "/v1/files", body=iter(body), encode_chunked=True, headers={
            "Authorization": f"Bearer {key}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def upload(client: openai.OpenAI, lines: list[dict[str, Any]], name: str = "in.jsonl") -> Any:
    return client.files.create(file=(name, jsonl(lines)), purpose="batch")


def test_files_upload_list_read_delete(server: Server, keys: ApiKeys) -> None:
    client = server.client(keys.create("files-user"))
    data = jsonl([completion_line("a", server.unserved, prompt="x = 1\n")])
    created = client.files.create(file=("prompts.jsonl", data), purpose="batch")
    assert (created.object, created.bytes, created.filename, created.purpose) == ("file", len(data), "prompts.jsonl",
                                                                                 "batch")
    assert client.files.retrieve(created.id) == created
    assert (server.files / created.id).read_bytes() == data
    assert client.files.content(created.id).content == data
    second = upload(client, [completion_line("b", server.unserved, prompt="y")])
    listed = client.files.list()
    assert [file.id for file in listed.data] == [second.id, created.id]  # newest first
    deleted = client.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    assert not (server.files / created.id).exists()
    with pytest.raises(openai.NotFoundError, match=created.id):
        client.files.retrieve(created.id)
    assert [file.id for file in client.files.list().data] == [second.id]


def test_keys_from_the_cli_and_401_for_none_wrong_or_revoked(server: Server) -> None:
    env = worker_env(server.settings)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dscbatch.cli.main", "api-key", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    created = cli("create", "cli-user")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("dsc-") and len(key) > 40
    assert "cli-user" in cli("list").stdout and key not in cli("list").stdout
    assert cli("create", "cli-user").returncode == 2  # a name is taken once
    client = server.client(key)
    assert client.files.list().data == []
    request = urllib.request.Request(f"{server.base_url}/files")  # no Authorization header at all
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401
    body = json.loads(refused.value.read())
    assert body["error"]["type"] == "authentication_error" and "Authorization: Bearer" in body["error"]["message"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
        server.client(key + "x").files.list()
    assert cli("revoke", "cli-user").returncode == 0
    with pytest.raises(openai.AuthenticationError):
        client.files.list()
    scrape = urllib.request.urlopen(f"{server.base_url.removesuffix('/v1')}/metrics", timeout=30).read().decode()
    assert 'dscbatch_server_requests_total{method="GET",route="/v1/files",status="401"}' in scrape
    assert key not in scrape and key[4:20] not in scrape


def test_each_key_sees_only_its_own_files_and_batches(server: Server, keys: ApiKeys, store: JobStore) -> None:
    alice, bob = server.client(keys.create("alice")), server.client(keys.create("bob"))
    mine = upload(alice, [completion_line("a", server.unserved, prompt="a")])
    batch = alice.batches.create(input_file_id=mine.id, endpoint="/v1/completions", completion_window="24h")
    assert batch.status == "in_progress"
    for read in (lambda: bob.files.retrieve(mine.id), lambda: bob.files.content(mine.id),
                 lambda: bob.files.delete(mine.id), lambda: bob.batches.retrieve(batch.id),
                 lambda: bob.batches.cancel(batch.id),
                 lambda: bob.batches.create(input_file_id=mine.id, endpoint="/v1/completions",
                                            completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            read()
    assert bob.files.list().data == [] and bob.batches.list().data == []
    assert [b.id for b in alice.batches.list().data] == [batch.id]
    assert alice.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    wait_for(alice, batch.id, {"cancelled"})  # the server's advancer ends it (and writes its error file)


def test_bad_input_is_refused_naming_the_problem_and_nothing_is_queued(server: Server, keys: ApiKeys,
                                                                        store: JobStore) -> None:
    client = server.client(keys.create("careless"))
    before, stored = queued(store), set(server.files.iterdir())
    not_jsonl = b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}\nnot json\n'
    with pytest.raises(openai.BadRequestError, match="not valid JSON Lines: line 2: invalid JSON") as refused:
        client.files.create(file=("bad.jsonl", not_jsonl), purpose="batch")
    assert refused.value.status_code == 400 and refused.value.param == "file"  # type: ignore[attr-defined]
    with pytest.raises(openai.APIStatusError, match=f"larger than the limit of {MAX_FILE_BYTES} bytes") as large:
        client.files.create(file=("big.jsonl", b'{"a": 1}\n' * (MAX_FILE_BYTES // 9 + 1)), purpose="batch")
    assert large.value.status_code == 413
    assert chunked_upload(server, keys.create("streamer"), MAX_FILE_BYTES + 1)[0] == 413  # no Content-Length
    status, body = chunked_upload(server, keys.create("streamer-ok"), MAX_FILE_BYTES // 2)
    assert status == 200 and body["bytes"] == (server.files / body["id"]).stat().st_size > MAX_FILE_BYTES // 2
    stored.add(server.files / body["id"])
    assert client.files.list().data == [] and set(server.files.iterdir()) == stored  # nothing kept of either
    good = upload(client, [completion_line("a", server.unserved, prompt="a")])
    with pytest.raises(openai.BadRequestError, match="endpoint: Input should be '/v1/completions' or "
                                                     "'/v1/chat/completions'"):
        client.batches.create(input_file_id=good.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window: Input should be '24h'"):
        client.batches.create(input_file_id=good.id, endpoint="/v1/completions", completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError, match="file-nope"):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/completions", completion_window="24h")
    mixed = upload(client, [completion_line("a", server.unserved, prompt="a"),
                            chat_line("b", server.unserved, "hi"),
                            completion_line("c", server.unserved, prompt="c", best_of=2),
                            {"id": "native", "prompt": "x"}])
    failed = client.batches.create(input_file_id=mixed.id, endpoint="/v1/completions", completion_window="24h")
    assert failed.status == "failed" and failed.failed_at is not None and failed.errors is not None
    errors = [(error.line, error.param, error.message) for error in failed.errors.data or []]
    assert errors == [
        (2, "url", "line 2: url: the line is for /v1/chat/completions, but the batch's endpoint is /v1/completions"),
        (3, "body.best_of", "line 3: body.best_of: unknown key"),
        (4, "custom_id", "line 4: not a Batch API request line (custom_id, method, url, body)")]
    assert queued(store) == before


def test_cancel_expire_and_list_with_pagination(server: Server, keys: ApiKeys, store: JobStore) -> None:
    client = server.client(keys.create("lister"))
    lines = [completion_line(f"c{i}", server.unserved, prompt=f"def f{i}():") for i in range(6)]
    source = upload(client, lines)
    batches = [client.batches.create(input_file_id=source.id, endpoint="/v1/completions", completion_window="24h",
                                     metadata={"n": str(i)}) for i in range(3)]
    assert all(b.status == "in_progress" and b.request_counts and b.request_counts.total == 6 for b in batches)
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == [batches[2].id, batches[1].id] and first.has_more
    assert [b.id for b in client.batches.list(limit=2)] == [b.id for b in reversed(batches)]  # the SDK pages on
    jobs = {store.status(job_id).input: job_id for job_id in store.job_ids()}
    assert f"{source.id} (batch {batches[0].id})" in jobs  # a batch is a job `dscbatch list` shows

    assert client.batches.cancel(batches[0].id).status in ("cancelling", "cancelled")
    cancelled = wait_for(client, batches[0].id, {"cancelled"})  # no worker runs its shards: ended within a round
    assert cancelled.cancelling_at and cancelled.cancelled_at
    assert cancelled.output_file_id is None
    records = file_lines(client, cancelled.error_file_id)
    assert sorted(r["custom_id"] for r in records) == sorted(line["custom_id"] for line in lines)
    assert {r["error"]["code"] for r in records} == {"cancelled"}
    assert cancelled.request_counts is not None and cancelled.request_counts.failed == 6
    with pytest.raises(openai.ConflictError, match="Cannot cancel a batch with status 'cancelled'"):
        client.batches.cancel(batches[0].id)

    # The window has passed (the record's deadline moved into the past): the server's advancer expires the batch.
    store.client.hset(store.keys.record("batch", batches[1].id), "expires_at", 1)
    expired = wait_for(client, batches[1].id, {"expired"})
    assert expired.expired_at is not None
    records = file_lines(client, expired.error_file_id)
    assert [r["custom_id"] for r in records] == [line["custom_id"] for line in lines]
    assert {r["error"]["code"] for r in records} == {"batch_expired"}
    assert store.status(jobs[f"{source.id} (batch {batches[1].id})"]).cancelled  # workers drop its shards
    assert wait_for(client, batches[2].id, {"in_progress"}).metadata == {"n": "2"}
    client.batches.cancel(batches[2].id)

"""A running ``dscbatch serve`` for the Batch API tests, and helpers to drive it with the real ``openai`` SDK."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from dscbatch.core.settings import Settings
from dscbatch.jobs.store import JobStore
from dscbatch.server.keys import ApiKeys
from dscbatch.workers.embedded import free_port, stop_process

from .conftest import worker_env

# Small, so that the over-the-limit upload is small too.
MAX_FILE_BYTES = 256 * 1024
START_SECONDS = 120


@dataclass(frozen=True)
class Server:
    base_url: str
    settings: Settings
    files: Path
    unserved: str  # a model name the server takes batches for and no worker serves: they stay in_progress
    clients: list[openai.OpenAI] = field(default_factory=list)

    def client(self, key: str) -> openai.OpenAI:
        self.clients.append(openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=60))
        return self.clients[-1]


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def completion_line(custom_id: str, model: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions",
            "body": {"model": model, "max_tokens": 4, **body}}


def chat_line(custom_id: str, model: str, content: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **body}}


def wait_for(client: openai.OpenAI, batch_id: str, statuses: set[str], timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    batch = client.batches.retrieve(batch_id)
    while batch.status not in statuses and time.monotonic() < deadline:
        time.sleep(0.5)
        batch = client.batches.retrieve(batch_id)
    assert batch.status in statuses, batch
    return batch


def file_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


@pytest.fixture(scope="module")
def server(settings: Settings, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("server")
    unserved = folder / "unserved-tiny"
    unserved.symlink_to(tiny_model)
    (folder / "files").mkdir()
    local = settings.model_copy(update={"files_url": str(folder / "files"), "max_file_bytes": MAX_FILE_BYTES})
    port = free_port()
    log = folder / "server.log"
    with log.open("wb") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "dscbatch.cli.main", "serve", "--model", str(tiny_model), "--model",
             str(unserved), "--port", str(port)], stdout=stream, stderr=subprocess.STDOUT,
            env=worker_env(local), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=5):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_process(process)
                raise RuntimeError(f"dscbatch serve did not start:\n{log.read_text()[-4000:]}") from None
            time.sleep(0.2)
    running = Server(f"{base}/v1", local, folder / "files", unserved.name)
    yield running
    for client in running.clients:
        client.close()
    stop_process(process)


@pytest.fixture(scope="module")
def keys(store: JobStore) -> ApiKeys:
    return ApiKeys(store)

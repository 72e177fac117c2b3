"""Security: pickle on the queue is never executed; passwords and ACL users work and never leak."""

from __future__ import annotations

import ast
import json
import os
import pickle
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dscbatch.core.celery_app import RUN_SHARD, make_app
from dscbatch.core.settings import Settings
from dscbatch.jobs.store import JobStore
from dscbatch.workers.embedded import free_port, start_redis, stop_process

from .conftest import ROOT, start_worker
from .test_pipeline import dscbatch, wait_settled

PASSWORD = "s3cret-Pa55word"
ACL_PASSWORD = "acl-Pa55word-7"


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.engine
def test_a_pickled_message_on_the_queue_is_rejected_and_never_executed(
        settings: Settings, store: JobStore, worker: Any, tiny_model: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    queue = f"{settings.key_prefix}.{tiny_model.name}"
    app = make_app(settings)
    with app.connection_for_write() as connection:
        connection.Producer().publish(
            ((_Exploit(marker),), {}, {}), serializer="pickle", routing_key=queue, exchange="",
            headers={"task": RUN_SHARD, "id": str(uuid.uuid4()), "lang": "py"})
    # A normal job behind it on the same queue completes: the worker went past the pickle and still runs.
    path = tmp_path / "after.jsonl"
    path.write_text('{"id": "after", "prompt": "x", "params": {"max_tokens": 2}}\n')
    job_id = dscbatch(settings, "submit", str(path), "--model", str(tiny_model)).stdout.split()[-1]
    wait_settled(store, job_id)
    assert not marker.exists()
    assert pickle.dumps(_Exploit(marker))  # the payload was a real exploit


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A redis-server with a password and an ACL user that may only touch dscbatch's keys."""
    port = free_port()
    directory = tmp_path_factory.mktemp("locked-redis")
    process = start_redis(directory, port, "--requirepass", PASSWORD, "--user", "default", "on", f">{PASSWORD}",
                          "~*", "&*", "+@all", "--user", "batch", "on", f">{ACL_PASSWORD}", "~dscbatch*",
                          "~_kombu*", "~unacked*", "&*", "+@all", "-@dangerous", "+info")
    yield port
    stop_process(process)


def _settings(url: str) -> Settings:
    return Settings(redis_url=url)


@pytest.mark.parametrize("credentials", [f":{PASSWORD}", f"batch:{ACL_PASSWORD}"], ids=["password", "acl-user"])
def test_password_and_acl_user_work_and_never_leak(locked_redis: int, credentials: str, deepseek_dir: Path,
                                                   tmp_path: Path) -> None:
    settings = _settings(f"redis://{credentials}@127.0.0.1:{locked_redis}/0")
    submitted = dscbatch(settings, "submit", str(ROOT / "examples" / "prompts.jsonl"), "--model", str(deepseek_dir))
    job_id = submitted.stdout.split()[-1]
    shown = dscbatch(settings, "status", job_id, "--json")
    assert json.loads(shown.stdout)["total"] == 7
    listed = dscbatch(settings, "list")
    secret = credentials.split(":")[1]
    for output in (submitted.stdout, submitted.stderr, shown.stdout, shown.stderr, listed.stdout, listed.stderr):
        assert secret not in output
    store = JobStore.connect(settings)
    assert store.status(job_id).queue == f"dscbatch.{deepseek_dir.name}"
    assert all(secret.encode() not in (store.client.get(k) or b"") for k in store.client.scan_iter("dscbatch:worker:*"))


def test_a_wrong_password_fails_with_one_clear_line(locked_redis: int, deepseek_dir: Path) -> None:
    settings = _settings(f"redis://:wrong-{PASSWORD}@127.0.0.1:{locked_redis}/0")
    result = dscbatch(settings, "list", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: Redis at redis://***@127.0.0.1:{locked_redis}/0 refused the credentials"
    assert PASSWORD not in result.stderr


FORBIDDEN_CALLS = {"eval", "exec", "compile", "pickle.load", "pickle.loads", "os.system", "os.popen",
                   "subprocess.call", "yaml.load"}


def _called_name(call: ast.Call) -> str:
    """The dotted name a call is made through (``os.system``), or '' for anything else (a method of a value)."""
    parts: list[str] = []
    node: ast.expr = call.func
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else ""


def test_model_output_is_only_ever_text() -> None:
    # Nothing in the package evaluates or executes text in its own process: no eval/exec/pickle loads, no
    # shell. (Redis' EVAL of the package's own Lua is a method of the client and is not flagged; generated
    # code runs only inside the executor's sandbox, as a separate bwrap process.)
    sources = [p for part in ("jobs", "workers", "cli", "monitoring", "server", "executor")
               for p in (ROOT / part).rglob("*.py")]
    offenders = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            if _called_name(node) in FORBIDDEN_CALLS:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {_called_name(node)}")
            offenders.extend(f"{path.relative_to(ROOT)}:{node.lineno}: shell=True" for keyword in node.keywords
                             if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant)
                                                                 and keyword.value.value is False))
    assert sources and offenders == []


def _make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 signed by it."""
    ca_key, ca, key, csr, cert = (directory / name for name in ("ca.key", "ca.crt", "server.key", "server.csr",
                                                                 "server.crt"))
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=dscbatch-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    extensions = directory / "san.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out",
        str(cert), "-days", "2", "-extfile", str(extensions))
    return ca, cert, key


@pytest.mark.engine
@pytest.mark.timeout(600)  # its own worker's engine starts inside the test
def test_tls_end_to_end_with_a_self_signed_ca(tiny_model: Path, tmp_path: Path) -> None:
    ca, cert, key = _make_certificates(tmp_path)
    port = free_port()
    server = start_redis(tmp_path, port, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
                         "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
                         "--requirepass", PASSWORD, ping_url=f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}")
    worker = None
    try:
        settings = Settings(redis_url=f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}",
                            key_prefix="tls")
        store = JobStore.connect(settings)
        worker = start_worker(settings, store, tiny_model, tmp_path / "worker.log")
        path = tmp_path / "tls.jsonl"
        path.write_text("".join(json.dumps({"id": f"t{i}", "prompt": f"x{i}", "params": {"max_tokens": 4}}) + "\n"
                                for i in range(6)))
        submitted = dscbatch(settings, "submit", str(path), "--model", str(tiny_model), "--wait")
        status = store.status(submitted.stdout.split()[-1])
        assert (status.done, status.total) == (6, 6)
        assert PASSWORD not in submitted.stderr + (tmp_path / "worker.log").read_text()
        untrusted = dscbatch(settings.model_copy(update={"redis_url": f"rediss://:{PASSWORD}@127.0.0.1:{port}/0"}),
                             "list", check=False)
        assert untrusted.returncode == 1 and "certificate verify failed" in untrusted.stderr
        assert len(untrusted.stderr.strip().splitlines()) == 1 and PASSWORD not in untrusted.stderr
    finally:
        if worker is not None:
            stop_process(worker)
        stop_process(server)

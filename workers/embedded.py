"""The embedded mode of ``dscbatch run``: a private redis-server and one local worker, cleaned up on exit.

Both run in their own process groups so that Ctrl-C reaches only ``run``, which then stops them in order
(worker first, with its engine's children, then Redis) and removes the temporary directory.

This is the one module beside ``jobs.store`` that imports ``redis`` (pyproject's import-linter contract names it):
it waits for the redis-server it started to answer a PING, before any store exists; it reads and writes no keys.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis

from dscbatch.core.errors import BrokerError, EngineError

REDIS_START_SECONDS = 20
STOP_SECONDS = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(directory: Path, port: int, *extra: str, ping_url: str | None = None) -> subprocess.Popen[bytes]:
    """A loopback redis-server with nothing persisted (unless ``extra`` says so), answering PING on
    ``ping_url`` (default: plain TCP on ``port``) when this returns."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BrokerError("redis-server is not installed (Debian: apt-get install redis-server)")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
         "--appendonly", "no", "--logfile", str(directory / "redis.log"), *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    client = redis.Redis.from_url(ping_url or f"redis://127.0.0.1:{port}/0", socket_connect_timeout=1)
    deadline = time.monotonic() + REDIS_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrokerError(f"redis-server exited at start (status {process.returncode}); see its log")
        try:
            client.ping()
            return process
        except redis.AuthenticationError:  # answering, and asking for a password it was started with
            return process
        except redis.ConnectionError:
            time.sleep(0.05)
    stop_process(process)
    raise BrokerError(f"redis-server did not answer within {REDIS_START_SECONDS} s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_SECONDS) -> None:
    """SIGTERM the process group, then SIGKILL it if it is not gone within ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # the engine's children outlive it in its group
        os.killpg(process.pid, signal.SIGKILL)


class EmbeddedCluster:
    """``with EmbeddedCluster(model, engine_args) as cluster:`` gives ``cluster.redis_url`` and a worker (and,
    with ``executor``, a ``dscbatch executor`` that judges verified results)."""

    def __init__(self, model: str, worker_args: Sequence[str] = (), executor: bool = False) -> None:
        self.model = model
        self.worker_args = list(worker_args)
        self.executor = executor
        self.directory = Path(tempfile.mkdtemp(prefix="dscbatch-run-"))
        self.port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.port}/0"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.children: dict[str, subprocess.Popen[bytes]] = {}  # dscbatch commands started, by name

    def __enter__(self) -> EmbeddedCluster:
        try:
            self.processes.append(start_redis(self.directory, self.port))
            if self.executor:
                self._start("executor")
            self._start("worker", "--model", self.model, *self.worker_args)
        except BaseException:
            self.close()
            raise
        return self

    def _start(self, command: str, *args: str) -> None:
        env = {**os.environ, "DSCBATCH_REDIS_URL": self.redis_url}
        with (self.directory / f"{command}.log").open("wb") as log:
            self.children[command] = subprocess.Popen(
                [sys.executable, "-m", "dscbatch.cli.main", command, *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        self.processes.append(self.children[command])

    def check_worker(self) -> None:
        """Raise with the end of its log if the worker (or the executor) has exited."""
        for command, process in self.children.items():
            if process.poll() is not None:
                log = (self.directory / f"{command}.log").read_text(errors="replace").strip().splitlines()[-15:]
                raise EngineError(f"the local {command} exited with status {process.returncode}:\n"
                                  + "\n".join(log))

    def close(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
        self.processes.clear()
        self.children.clear()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

"""The sandbox: hostile programs end as failed/timeout/memory within their limits, the host is unchanged,
and the sandbox keeps serving afterwards."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from dscbatch.core.errors import SandboxError
from dscbatch.executor.sandbox import SLOT_UID_BASE, SLOT_UIDS, Limits, Sandbox, Verdict

LIMITS = Limits(wall_seconds=8, cpu_seconds=4, memory_bytes=512 << 20, processes=24, output_bytes=1 << 20)
# Budget for one hostile run: its limit plus bwrap's start and the kill, on a loaded machine.
SLACK_SECONDS = 10


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    sandbox = Sandbox(LIMITS)
    sandbox.check()
    return sandbox


def _slot_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["uids"]):
        uids = process.info["uids"]
        if uids is not None and SLOT_UID_BASE <= uids.real < SLOT_UID_BASE + SLOT_UIDS:
            found.append(process)
    return found


def _hostile(sandbox: Sandbox, program: str, limit: float) -> Verdict:
    """Run ``program``; assert it ended within ``limit`` (+ slack), left no process behind, and that the
    sandbox still passes a good program afterwards."""
    started = time.monotonic()
    verdict = sandbox.run(program)
    assert time.monotonic() - started < limit + SLACK_SECONDS, verdict
    assert verdict.status in ("failed", "timeout", "memory"), verdict
    assert _slot_processes() == []
    assert sandbox.run("assert sum(range(10)) == 45\n").status == "passed"
    return verdict


def test_a_good_program_passes_and_a_failing_one_fails_with_its_traceback_tail(sandbox: Sandbox) -> None:
    assert sandbox.run("import math\nassert math.gcd(12, 18) == 6\n").status == "passed"
    verdict = sandbox.run("def f():\n    raise ValueError('wrong answer 42')\nf()\n")
    assert verdict.status == "failed"
    assert verdict.error.rstrip().endswith("ValueError: wrong answer 42")


def test_a_fork_bomb_is_stopped_at_the_process_limit(sandbox: Sandbox) -> None:
    # One that dies on the first refused fork, and one that ignores refusals and keeps forking.
    verdict = _hostile(sandbox, "import os\nwhile True:\n    os.fork()\n", LIMITS.wall_seconds)
    assert verdict.status == "failed" and "BlockingIOError" in verdict.error
    stubborn = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    assert _hostile(sandbox, stubborn, LIMITS.wall_seconds).status == "timeout"


def test_an_endless_loop_times_out(sandbox: Sandbox) -> None:
    verdict = _hostile(sandbox, "while True:\n    pass\n", LIMITS.wall_seconds)
    assert verdict.status == "timeout"
    sleeper = _hostile(sandbox, "import time\ntime.sleep(3600)\n", LIMITS.wall_seconds)
    assert sleeper.status == "timeout" and sleeper.seconds >= LIMITS.wall_seconds


def test_a_16_gb_allocation_is_a_memory_verdict(sandbox: Sandbox) -> None:
    verdict = _hostile(sandbox, "block = bytearray(16 << 30)\n", 1)
    assert verdict.status == "memory" and "MemoryError" in verdict.error


def test_writing_outside_the_tmpfs_fails_and_leaves_the_host_unchanged(sandbox: Sandbox, tmp_path: Path) -> None:
    target = tmp_path / "escaped"
    for path in (target, Path("/usr/escaped"), Path("/escaped")):
        verdict = _hostile(sandbox, f"open({str(path)!r}, 'w').write('x')\n", 1)
        assert verdict.status == "failed" and "Error" in verdict.error
        assert not path.exists()
    # The tmpfs is writable, private and capped.
    assert sandbox.run("open('/tmp/ok', 'w').write('x' * 1000)\nassert open('/tmp/ok').read() == 'x' * 1000\n"
                       ).status == "passed"
    assert not Path("/tmp/ok").exists()
    assert _hostile(sandbox, "open('/tmp/big', 'wb').write(b'x' * (100 << 20))\n", 1).status in ("failed",
                                                                                                    "memory")


def test_the_executors_environment_is_not_visible(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "redis://:hunter2-sandbox-secret@10.0.0.1:6379/0"
    monkeypatch.setenv("DSCBATCH_TEST_SECRET", secret)
    program = ("import os, glob\nseen = [repr(dict(os.environ))]\n"
               "for path in glob.glob('/proc/*/environ'):\n"
               "    try:\n        seen.append(open(path, 'rb').read().decode(errors='replace'))\n"
               "    except OSError:\n        pass\n"
               "raise RuntimeError(' '.join(seen))\n")
    verdict = _hostile(sandbox, program, 1)
    assert verdict.status == "failed" and "RuntimeError" in verdict.error
    assert "hunter2" not in verdict.error and "DSCBATCH" not in verdict.error


@pytest.fixture
def loopback_server() -> Iterator[tuple[int, list[socket.socket]]]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()


def test_no_socket_reaches_a_server_on_the_hosts_loopback(sandbox: Sandbox,
                                                          loopback_server: tuple[int, list[socket.socket]]) -> None:
    port, accepted = loopback_server

    def host_connects() -> tuple[str, int]:
        """Connect from the host and wait until the server has accepted this connection; its address."""
        with socket.create_connection(("127.0.0.1", port)) as connection:
            address = connection.getsockname()
            deadline = time.monotonic() + 30
            while address not in [peer.getpeername() for peer in list(accepted)]:
                assert time.monotonic() < deadline, "the server never accepted the host's connection"
                time.sleep(0.01)
        return address

    first = host_connects()  # the server answers the host
    for host in ("127.0.0.1", "localhost", "pypi.org"):
        program = f"import socket\nsocket.create_connection(({host!r}, {port}), timeout=2).sendall(b'hello')\n"
        verdict = _hostile(sandbox, program, 2)
        assert verdict.status == "failed" and "[Errno" in verdict.error  # refused, or no name resolution
    # Connections are accepted in the order they arrive: one from a sandbox would come before this marker.
    marker = host_connects()
    assert [peer.getpeername() for peer in accepted] == [first, marker]


def test_killing_its_parent_leaves_the_executor_serving(sandbox: Sandbox) -> None:
    program = ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, signal.SIGKILL)\n"
               "os.kill(-1, signal.SIGKILL)\n")
    assert _hostile(sandbox, program, 1).status == "failed"
    assert os.getpid() in psutil.pids()


def test_a_gigabyte_printed_is_cut_at_the_output_cap(sandbox: Sandbox) -> None:
    program = "import sys\nline = 'x' * 1023 + '\\n'\nfor _ in range(1 << 20):\n    sys.stdout.write(line)\n"
    verdict = _hostile(sandbox, program, 1)
    assert verdict.status == "failed" and f"printed more than {LIMITS.output_bytes} bytes" in verdict.error


def test_without_bwrap_nothing_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxError, match=r"bwrap \(bubblewrap\) is not installed"):
        Sandbox(LIMITS)


def test_a_sandbox_whose_python_fails_before_the_program_is_a_sandbox_error() -> None:
    """bwrap started its child, then the host failed it (here: a Python under /tmp, hidden inside by the sandbox's
    own /tmp, so it cannot start): not the sample's failure, and the start check refuses such a host."""
    with tempfile.TemporaryDirectory(prefix="dscbatch-broken-python-", dir="/tmp") as directory:
        python = Path(directory) / "bin" / "python3"
        python.parent.mkdir()
        python.write_text("#!/bin/sh\nexit 1\n")  # an executable for Sandbox's check; never reached inside
        for path in (Path(directory), python.parent, python):
            path.chmod(0o755)  # readable by the slot uid a root executor runs bwrap as
        broken = Sandbox(LIMITS, str(python))
        verdict = broken.run("print('never runs')\n")
        assert verdict.status == "sandbox_error" and f"failed to execute {python}" in verdict.error, verdict
        with pytest.raises(SandboxError, match="the sandbox does not work on this host: prlimit: failed to execute"):
            broken.check()


def test_a_program_printing_what_bwrap_prints_still_fails(sandbox: Sandbox) -> None:
    """The sandbox's start mark is closed before the program's first line: the program cannot pass as the host."""
    program = "import sys\nprint(\"bwrap: Can't mount proc on /newroot/proc: Operation not permitted\")\nsys.exit(1)\n"
    verdict = sandbox.run(program)
    assert verdict.status == "failed" and "Can't mount proc" in verdict.error, verdict

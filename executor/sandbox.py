"""Run one untrusted Python program in a bubblewrap sandbox and say how it ended (a :class:`Verdict`).

Other languages run as a Python *driver* that compiles and runs them under the same guarantees
(executor/toolchain.py); a run's :class:`Setup` widens the limits for their compilers and mounts their
configuration and test dependencies read-only.

What a program gets: no network (its own empty network namespace), its own pid, ipc and uts namespaces (it
sees no host process, and when it ends every process it started dies with its namespace), read-only system
directories (``/usr`` and the ``/lib``-style links), a private size-capped tmpfs at ``/tmp`` as the only
writable place, an empty environment (none of the executor's variables: no Redis URL or password), and
rlimits on address space, CPU seconds, processes, file size and open files (set by ``prlimit`` inside, so
they bind the program and not bwrap). The executor adds a wall-clock limit that kills the whole process
group and a cap on what the program prints.

Sandboxed code never runs as root. The kernel does not apply ``RLIMIT_NPROC`` to a process whose real uid
is root, whatever uid it has inside its user namespace, so an executor running as root (containers, CI)
starts bwrap as a *slot uid* of its own (``SLOT_UID_BASE`` and up, one per concurrent sandbox, leased with a
file lock so that two executors on one host never share one). An executor that is not root runs bwrap as
itself. Either way the process limit counts the processes of the sandbox's own user namespace (Linux 5.14+
counts ``RLIMIT_NPROC`` per user namespace), so the executor's threads and other sandboxes do not use it up.

bwrap's outer process exits as soon as it learns the exit status, before its child (the namespace's init)
is reaped, which would leave that child to the host's pid 1: a zombie that still counts against the slot
uid's process limit (and never goes away where the executor is a container's pid 1). The executor is
therefore a child subreaper (``PR_SET_CHILD_SUBREAPER``) and reaps each run's init by its pid itself.

bwrap reports its child's pid before that child mounts the sandbox's file systems, and a mount that fails
there (a container runtime's masked ``/proc``) or a Python that cannot start exits like a failing program. So
the sandbox's Python first writes one byte to a *start pipe*, closes it, and only then executes the program:
a run that ends without that byte is the host's failure (``sandbox_error``), never the sample's, and the
program cannot fake it (the pipe is closed before its first line runs).

Without ``bwrap`` nothing runs: :class:`Sandbox` raises :class:`SandboxError` rather than fall back.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dscbatch.core.errors import SandboxError
from dscbatch.core.settings import Settings

VERDICTS = ("passed", "failed", "timeout", "memory", "sandbox_error")
# Slot uids for a root executor: unused by Debian (its dynamic range ends at 59999, nobody is 65534).
SLOT_UID_BASE = 61000
SLOT_UIDS = 4096
# The uid and gid the program has inside its user namespace.
INNER_ID = 65534
# Characters of output kept for a failed verdict's error: the end of a traceback.
ERROR_TAIL_CHARS = 2000
SYSTEM_DIRS = ("/usr",)
# On merged-/usr systems these are links into /usr, made again inside; otherwise bound read-only.
SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# How a program says it ran out of memory: Python, C, C++, Java/Scala, Go, Rust, node, PHP, mono, R, D.
MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "OutOfMemoryError",
                  "runtime: out of memory", "memory allocation of", "heap out of memory", "Allowed memory size",
                  "Out of memory", "OutOfMemoryException", "cannot allocate vector", "core.exception.OutOfMemory")
READ_CHUNK = 1 << 16
PR_SET_CHILD_SUBREAPER = 36
# Run by the sandbox's Python under its limits: mark the start pipe, close it, then become the program.
START = "import os; os.write({fd}, b'1'); os.close({fd}); os.execv({python}, [{python}, '-I', '-B', '/tmp/main.py'])"


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30  # address space
    processes: int = 32  # bwrap's own two included
    file_bytes: int = 16 << 20  # largest file it may write
    open_files: int = 64
    output_bytes: int = 1 << 20  # stdout and stderr together; more ends the run as failed
    tmpfs_bytes: int = 64 << 20


@dataclass(frozen=True)
class Setup:
    """What one run adds to the sandbox: its limits and read-only mounts (host path, path inside; mounted after
    the tmpfs, so they may lie under /tmp)."""

    limits: Limits | None = None
    mounts: tuple[tuple[str, str], ...] = ()
    writable: tuple[tuple[str, str], ...] = ()  # only for trusted programs (a toolchain cache's warm-up)


@dataclass(frozen=True)
class Verdict:
    status: str  # one of VERDICTS
    error: str = ""  # the end of the output (a traceback), or why the sandbox stopped it
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _SlotUids:
    """Leases uids to concurrent sandboxes across every executor on this host (one lock file per uid)."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.gettempdir()) / "dscbatch-sandbox-uids"
        self.directory.mkdir(mode=0o700, exist_ok=True)

    @contextlib.contextmanager
    def lease(self) -> Iterator[int]:
        for uid in range(SLOT_UID_BASE, SLOT_UID_BASE + SLOT_UIDS):
            fd = os.open(self.directory / str(uid), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield uid
            finally:
                os.close(fd)  # releases the lock
            return
        raise SandboxError(f"all {SLOT_UIDS} sandbox uids are in use on this host")


class Sandbox:
    """Thread-safe: each :meth:`run` has its own bwrap process (and, as root, its own slot uid)."""

    def __init__(self, limits: Limits = Limits(), python: str = "/usr/bin/python3") -> None:
        bwrap, prlimit = shutil.which("bwrap"), shutil.which("prlimit")
        if bwrap is None:
            raise SandboxError("bwrap (bubblewrap) is not installed; generated code runs only in its sandbox "
                               "(Debian: apt-get install bubblewrap)")
        if prlimit is None:
            raise SandboxError("prlimit (util-linux) is not installed; the sandbox sets its limits with it")
        if not os.access(python, os.X_OK):
            raise SandboxError(f"the sandbox's Python {python} is not an executable (DSCBATCH_SANDBOX_PYTHON)")
        self.bwrap, self.prlimit, self.python, self.limits = bwrap, prlimit, python, limits
        self._slots = _SlotUids() if os.geteuid() == 0 else None
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise SandboxError(f"cannot become a child subreaper: {os.strerror(ctypes.get_errno())}")

    @classmethod
    def from_settings(cls, settings: Settings) -> Sandbox:
        seconds = settings.sandbox_timeout
        limits = Limits(wall_seconds=seconds, cpu_seconds=max(1, int(seconds + 0.999)),
                        memory_bytes=settings.sandbox_memory_mb << 20)
        return cls(limits, settings.sandbox_python)

    def check(self) -> None:
        """Raise :class:`SandboxError` unless a trivial program passes here (bwrap may lack user namespaces)."""
        verdict = self.run("pass\n")
        if not verdict.passed:
            reason = verdict.error.strip().splitlines()[-1:] or [verdict.status]
            raise SandboxError(f"the sandbox does not work on this host: {reason[0]}")

    def run(self, program: str, setup: Setup = Setup()) -> Verdict:
        """Run the Python ``program`` (for other languages, executor/toolchain.py's driver) with ``setup``."""
        started = time.monotonic()
        limits = setup.limits or self.limits
        with self._identity() as identity, _program_fd(program) as program_fd:
            status_read, status_write = os.pipe()
            start_read, start_write = os.pipe()
            try:
                try:
                    process = subprocess.Popen(
                        self._command(program_fd, status_write, start_write, limits, setup), stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        pass_fds=(program_fd, status_write, start_write),
                        env={}, start_new_session=True, **identity)
                except OSError as error:
                    return Verdict("sandbox_error", f"cannot start bwrap: {error}", time.monotonic() - started)
                finally:
                    os.close(status_write)
                    os.close(start_write)
                try:
                    stopped, tail = self._watch(process, started, limits)
                finally:
                    if process.returncode is None:  # still running (or unreaped): end the whole group
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(process.pid, signal.SIGKILL)
                        process.wait()
                    assert process.stdout is not None
                    process.stdout.close()
                status = _read_status(status_read)
                _reap(status)
                program_started = _drain(start_read) != b""
            finally:
                os.close(status_read)
                os.close(start_read)
        seconds = time.monotonic() - started
        return _verdict(stopped, tail, status, program_started, process.returncode, limits, seconds)

    @contextlib.contextmanager
    def _identity(self) -> Iterator[dict[str, Any]]:
        if self._slots is None:
            yield {}
            return
        with self._slots.lease() as uid:
            yield {"user": uid, "group": uid, "extra_groups": []}

    def _command(self, program_fd: int, status_fd: int, start_fd: int, limits: Limits, setup: Setup) -> list[str]:
        binds: list[str] = []
        for directory in SYSTEM_DIRS:
            binds += ["--ro-bind", directory, directory]
        prefix = Path(os.path.realpath(self.python)).parents[1]
        if not any(prefix.is_relative_to(directory) for directory in SYSTEM_DIRS):
            binds += ["--ro-bind", str(prefix), str(prefix)]
        for link in SYSTEM_LINKS:
            if os.path.islink(link):
                binds += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                binds += ["--ro-bind", link, link]
        return [
            self.bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8",
            *binds, "--proc", "/proc", "--dev", "/dev",
            "--size", str(limits.tmpfs_bytes), "--tmpfs", "/tmp", "--file", str(program_fd), "/tmp/main.py",
            *(item for source, target in setup.mounts for item in ("--ro-bind", source, target)),
            *(item for source, target in setup.writable for item in ("--bind", source, target)),
            "--remount-ro", "/", "--chdir", "/tmp", "--hostname", "sandbox",
            "--uid", str(INNER_ID), "--gid", str(INNER_ID), "--json-status-fd", str(status_fd), "--",
            self.prlimit, f"--as={limits.memory_bytes}", f"--cpu={limits.cpu_seconds}",
            f"--nproc={limits.processes}", f"--fsize={limits.file_bytes}", f"--nofile={limits.open_files}",
            "--core=0", "--", self.python, "-I", "-S", "-c", START.format(fd=start_fd, python=repr(self.python)),
        ]

    def _watch(self, process: subprocess.Popen[bytes], started: float,
               limits: Limits) -> tuple[str | None, bytes]:
        """Read the output until the program ends; returns (why it was stopped, or None; the output's end)."""
        assert process.stdout is not None
        fd = process.stdout.fileno()
        deadline = started + limits.wall_seconds
        tail, total = b"", 0
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    return "timeout", tail
                chunk = os.read(fd, READ_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                tail = (tail + chunk)[-4 * ERROR_TAIL_CHARS:]
                if total > limits.output_bytes:
                    return "output", tail
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return "timeout", tail
        return None, tail


@contextlib.contextmanager
def _program_fd(program: str) -> Iterator[int]:
    """The program in an anonymous memory file, which bwrap copies into the sandbox's tmpfs."""
    fd = os.memfd_create("dscbatch-program")
    try:
        os.write(fd, program.encode())
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)


def _reap(status: dict[str, Any]) -> None:
    """Reap the run's namespace init, which bwrap's outer process (gone by now) leaves to its subreaper, this
    process: it is exiting already, and is killed in case it is not (its pid cannot be reused until reaped)."""
    child = status.get("child-pid")
    if isinstance(child, int):
        with contextlib.suppress(ChildProcessError, ProcessLookupError):  # not ours: reaped elsewhere
            if os.waitpid(child, os.WNOHANG) == (0, 0):  # not exited yet
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)


def _drain(fd: int) -> bytes:
    """What a pipe holds once every writer is gone (or has stopped writing)."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, READ_CHUNK):
            data += chunk
    return data


def _read_status(fd: int) -> dict[str, Any]:
    """bwrap's JSON status documents merged: ``child-pid`` once its child exists, then ``exit-code``."""
    merged: dict[str, Any] = {}
    decoder = json.JSONDecoder()
    text, position = _drain(fd).decode(errors="replace"), 0
    while (position := _skip_space(text, position)) < len(text):
        try:
            document, position = decoder.raw_decode(text, position)
        except ValueError:
            break
        if isinstance(document, dict):
            merged.update(document)
    return merged


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _verdict(stopped: str | None, tail: bytes, status: dict[str, Any], program_started: bool, returncode: int,
             limits: Limits, seconds: float) -> Verdict:
    error = tail.decode(errors="replace")[-ERROR_TAIL_CHARS:]
    if stopped == "timeout":
        return Verdict("timeout", f"ran past the wall-clock limit of {limits.wall_seconds:g} s", seconds)
    if stopped == "output":
        return Verdict("failed", f"printed more than {limits.output_bytes} bytes; stopped", seconds)
    if not program_started:  # bwrap, its mounts, prlimit or Python failed before the program: the host's fault
        return Verdict("sandbox_error", error.strip() or f"bwrap exited with status {returncode}", seconds)
    code = int(status.get("exit-code", returncode))
    if code == 0:
        return Verdict("passed", "", seconds)
    if code in (128 + signal.SIGXCPU, 128 + signal.SIGKILL):
        return Verdict("timeout", f"killed at the CPU time limit of {limits.cpu_seconds} s", seconds)
    if code == 128 + signal.SIGALRM:  # a compiled program's own limit (executor/toolchain.py)
        return Verdict("timeout", "killed at the run's time limit (after its compilation)", seconds)
    last_lines = "\n".join(error.strip().splitlines()[-3:])
    if any(marker in last_lines for marker in MEMORY_MARKERS):
        return Verdict("memory", error, seconds)
    return Verdict("failed", error or f"exited with status {code}", seconds)

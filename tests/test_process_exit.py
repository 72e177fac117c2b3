"""A stopped worker process ends, with its status, whatever threads still run in it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from dscbatch.core.settings import Settings
from dscbatch.jobs.store import JobStore

from .conftest import start_executor

STUCK = """
import logging, threading
from dscbatch.core.process_exit import exit_process
logging.basicConfig(level=logging.INFO)
threading.Thread(target=threading.Event().wait, name="stuck-pool-thread").start()  # never returns
exit_process(3)
"""


def test_a_thread_that_never_returns_does_not_keep_the_process_alive() -> None:
    done = subprocess.run([sys.executable, "-c", STUCK], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert "thread 'stuck-pool-thread' still runs at exit; not waiting for it" in done.stderr
    assert "exiting with status 3" in done.stderr


def test_an_executor_writes_its_stacks_on_sigusr1_and_stops_with_status_zero_on_sigterm(settings: Settings,
                                                                                        tmp_path: Path) -> None:
    own = settings.model_copy(update={"key_prefix": "exit-test"})  # a queue of its own: it takes no one's work
    log = tmp_path / "executor.log"
    executor = start_executor(own, JobStore.connect(own), log)
    deadline = time.monotonic() + 60
    while " ready." not in log.read_text():  # Celery's signal handlers are in place (SIGTERM: warm shutdown)
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    executor.send_signal(signal.SIGUSR1)  # every thread's stack, written by the signal itself
    while "most recent call first" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    # faulthandler names no threads: the sweeper is the one waiting in its loop (core/threads.py, LoopThread.run).
    assert re.search(r'File ".*/core/threads\.py", line \d+ in run', log.read_text()), log.read_text()
    assert executor.poll() is None  # and it goes on serving
    started = time.monotonic()
    executor.send_signal(signal.SIGTERM)
    assert executor.wait(timeout=60) == 0
    assert time.monotonic() - started < 60
    assert "exiting with status 0" in log.read_text()

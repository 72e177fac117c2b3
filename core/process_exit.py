"""How a worker or executor process ends once its Celery worker has stopped: at once, with Celery's exit code.

The interpreter's own exit joins every non-daemon thread and runs every atexit hook (concurrent.futures joins
its pool threads, multiprocessing joins child processes); one that never returns keeps a stopped worker alive,
holding its pod and its GPU, with nothing in its log. By then the process has handed back or stored all its
work and closed its engine, so it logs whatever still lingers (names and stacks, for the next bug report),
flushes its logs and leaves with ``os._exit``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from typing import NoReturn

log = logging.getLogger(__name__)


def lingering_threads() -> list[threading.Thread]:
    """Live non-daemon threads other than this one: those the interpreter's exit would wait for."""
    current = threading.current_thread()
    return [thread for thread in threading.enumerate()
            if thread is not current and not thread.daemon and thread.is_alive()]


def exit_process(code: int) -> NoReturn:
    """Log the threads a normal exit would wait for, flush the logs and end the process with ``code``."""
    frames = sys._current_frames()
    for thread in lingering_threads():
        stack = "".join(traceback.format_stack(frames[thread.ident])) if thread.ident in frames else "(no frame)\n"
        log.warning("thread %r still runs at exit; not waiting for it:\n%s", thread.name, stack.rstrip())
    log.info("exiting with status %d", code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)

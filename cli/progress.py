"""A progress line for long waits: items done/total, items/s, tokens/s, ETA and failures."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from dscbatch.jobs.store import JobStatus, JobStore
from dscbatch.jobs.store.events import JobEvents

BAR_WIDTH = 24
PLAIN_EVERY_SECONDS = 10.0
# How often a waiting command reads the job's record between the job's events (``JobStore.events``): its progress
# line's pace. The job's end (settled, results file written, cancelled) wakes it at once; reading the record
# twenty times a second instead cost a 2-core machine's engine 2-3% (`submit` took 0.2-0.4 s of CPU in a job of
# 4 s) and a shared Redis as many reads per waiting client.
LOOK_SECONDS = 0.5


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _count(value: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.1f}"


def progress_line(status: JobStatus, first: JobStatus, elapsed: float) -> str:
    settled = status.done + status.failed
    items = settled - first.done - first.failed
    tokens = status.completion_tokens - first.completion_tokens
    rate = items / elapsed if elapsed > 0 else 0.0
    eta = _duration(status.pending / rate) if rate > 0 else "-:--:--"
    # While the file is still read, the total is the lines read so far: the ETA is a lower bound.
    more, at_least = ("+", ">") if status.submitting else ("", "")
    filled = BAR_WIDTH * settled // status.total if status.total else BAR_WIDTH
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    percent = 100 * settled // status.total if status.total else 100
    # A job that ended before this command first looked has no speed to show (not 0 items/s).
    speed = (f"{_count(rate)} items/s  {_count(tokens / elapsed if elapsed > 0 else 0.0)} tok/s  ETA {at_least}{eta}  "
             if items or not status.settled else "")
    return (f"[{bar}] {settled}/{status.total}{more} items {percent:3d}%  {speed}failed {status.failed}"
            + (f"  verified {status.verified}/{status.to_verify}" if status.to_verify else ""))


class ReadingProgress:
    """``read N lines`` while submit reads its input: redrawn in place on a terminal; elsewhere one line every
    ``PLAIN_EVERY_SECONDS``. ``done`` ends it with the final count on a line of its own."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.lines = 0
        self.last_plain = time.monotonic()

    def __call__(self, lines: int) -> None:
        self.lines = lines
        if self.tty:
            self.stream.write(f"\rread {lines} lines")
        elif time.monotonic() - self.last_plain >= PLAIN_EVERY_SECONDS:
            self.stream.write(f"read {lines} lines\n")
            self.last_plain = time.monotonic()
        self.stream.flush()

    def done(self) -> None:
        self.stream.write("\n" if self.tty else f"read {self.lines} lines\n")
        self.stream.flush()


def _progressed(status: JobStatus, first: JobStatus) -> bool:
    return (status.done + status.failed, status.completion_tokens) != (first.done + first.failed,
                                                                       first.completion_tokens)


def wait_for_engine(store: JobStore, check: Callable[[], None], *, stream: TextIO = sys.stderr) -> None:
    """Wait until a worker's heartbeat says its engine is up, showing the seconds waited (redrawn in place on a
    terminal, elsewhere a line every ``PLAIN_EVERY_SECONDS``); ``check`` raises if the worker died."""
    started = last_plain = time.monotonic()
    tty = stream.isatty()
    stream.write("waiting for the local worker's engine to start ..." + ("" if tty else "\n"))
    stream.flush()
    while not store.workers():
        check()
        now = time.monotonic()
        if tty:
            stream.write(f"\rwaiting for the local worker's engine to start ... {now - started:.0f} s")
        elif now - last_plain >= PLAIN_EVERY_SECONDS:
            stream.write(f"waiting for the local worker's engine to start ... {now - started:.0f} s\n")
            last_plain = now
        stream.flush()
        time.sleep(0.5)
    line = f"the local worker's engine started in {time.monotonic() - started:.0f} s"
    stream.write(("\r" + line.ljust(60) if tty else line) + "\n")
    stream.flush()


def wait_for_job(store: JobStore, job_id: str, *, interval: float = LOOK_SECONDS, stream: TextIO = sys.stderr,
                 check: Callable[[], None] | None = None) -> JobStatus:
    """Wait until the job settles (every result and verdict in, or cancelled), drawing progress on ``stream``."""
    with store.events(job_id) as events:
        return _watch(store, job_id, events, interval, stream, check)


def wait_for_results(store: JobStore, job_id: str, *, interval: float = LOOK_SECONDS, stream: TextIO = sys.stderr,
                     check: Callable[[], None] | None = None) -> JobStatus:
    """``wait_for_job``, then, where the job writes a results file (``--output``) and was not cancelled, wait
    until a worker has written it: one subscription to the job's events for both."""
    with store.events(job_id) as events:
        status = _watch(store, job_id, events, interval, stream, check)
        if status.output_url is None or status.cancelled:
            return status
        return _finalized(store, job_id, events, interval, stream)


def _finalized(store: JobStore, job_id: str, events: JobEvents, interval: float, stream: TextIO) -> JobStatus:
    """Wait until a worker has written a settled job's results file, saying on ``stream`` why each failed
    attempt failed (the workers try again; without this the command would wait without a word)."""
    reported = None
    while True:
        status = store.status(job_id)
        if status.results_url is not None or status.cancelled:
            return status
        if status.finalize_error not in (None, reported):
            stream.write(f"the results file could not be written: {status.finalize_error} (a worker tries "
                         f"again; Ctrl-C stops waiting, the job stays: `dscbatch status {job_id}`)\n")
            stream.flush()
            reported = status.finalize_error
        events.wait(interval)


def _watch(store: JobStore, job_id: str, events: JobEvents, interval: float, stream: TextIO,
           check: Callable[[], None] | None) -> JobStatus:
    first = status = store.status(job_id)
    started = last_plain = time.monotonic()
    tty = stream.isatty()
    while True:
        now = time.monotonic()
        if not _progressed(status, first):
            # Speeds count from the first result in: not the engine's start, nor a queue's wait.
            first, started = status, now
        line = progress_line(status, first, now - started)
        finished = status.settled
        if tty:
            stream.write("\r" + line + ("\n" if finished else ""))
            stream.flush()
        elif finished or now - last_plain >= PLAIN_EVERY_SECONDS:
            stream.write(line + "\n")
            stream.flush()
            last_plain = now
        if finished:
            return status
        if check is not None:
            check()
        events.wait(interval)
        status = store.status(job_id)

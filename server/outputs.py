"""A settled batch's output and error files: its job's result lines, split by their ``error`` field.

A batch's job has an output folder in the files store, so a worker writes its ``results.jsonl`` once it settles
(``jobs.finalize``); the split reads that file. A cancelled or expired job never settles: its lines come from
Redis, with error records for the items that did not run. Both files stream into the files store as the lines
are read: nothing is staged elsewhere first.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import IO

from dscbatch.jobs.output import result_lines
from dscbatch.jobs.store import JobStatus, JobStore
from dscbatch.server.files import FileStore
from dscbatch.server.models import FileObject

# Codes of items that never ran; an expired batch reports them as OpenAI does.
NOT_RUN_CODES = frozenset({"cancelled", "pending"})
EXPIRED = {"code": "batch_expired", "message": "This request could not be executed before the completion window "
                                               "expired."}


@dataclass(frozen=True)
class SplitFiles:
    output_file_id: str | None
    error_file_id: str | None
    completed: int
    failed: int


WRITE_LINES = 1024  # lines written to the files store at once
# How a successful OpenAI result line ends (``result_line`` writes ``error`` last): such a line needs no parsing.
SUCCEEDED_END = '"error": null}'


class _Split:
    """One of the two files, opened in the files store at its first line (a file with no lines is left out)."""

    def __init__(self, stack: contextlib.ExitStack, files: FileStore, owner: str, filename: str) -> None:
        self.stack, self.files, self.owner, self.filename = stack, files, owner, filename
        self.stream: IO[bytes] | None = None
        self.published: list[FileObject] = []
        self.lines = 0
        self.chunk: list[bytes] = []

    def write(self, line: str) -> None:
        if self.stream is None:
            self.stream, self.published = self.stack.enter_context(
                self.files.writing(self.owner, self.filename, "batch_output"))
        self.chunk.append((line + "\n").encode("utf-8"))
        self.lines += 1
        if len(self.chunk) >= WRITE_LINES:
            self.flush()

    def flush(self) -> None:
        if self.stream is not None and self.chunk:
            self.stream.write(b"".join(self.chunk))
            self.chunk = []


def split_results(store: JobStore, status: JobStatus, files: FileStore, owner: str, batch_id: str,
                  expired: bool) -> SplitFiles:
    """Publish the successful lines as the output file and the failed ones as the error file, streamed into the
    files store as they are read (an empty one is left out, as OpenAI does)."""
    with contextlib.ExitStack() as stack:
        good = _Split(stack, files, owner, f"{batch_id}_output.jsonl")
        bad = _Split(stack, files, owner, f"{batch_id}_error.jsonl")
        for line in result_lines(store, status, partial=True):
            if line.endswith(SUCCEEDED_END) or (record := json.loads(line)).get("error") is None:
                good.write(line)
                continue
            if expired and record["error"].get("code") in NOT_RUN_CODES:
                line = json.dumps({**record, "error": EXPIRED}, ensure_ascii=False)
            bad.write(line)
        good.flush()
        bad.flush()
    return SplitFiles(good.published[0].id if good.lines else None, bad.published[0].id if bad.lines else None,
                      good.lines, bad.lines)

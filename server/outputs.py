"""A settled batch's output and error files: its job's result lines, split by their ``error`` field.

A batch's job has an output folder in the files store, so a worker writes its ``results.jsonl`` once it settles
(``jobs.finalize``); the split reads that file. A cancelled or expired job never settles: its lines come from
Redis, with error records for the items that did not run.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dscbatch.jobs.output import result_lines
from dscbatch.jobs.store import JobStatus, JobStore
from dscbatch.server.files import FileStore

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


def split_results(store: JobStore, status: JobStatus, files: FileStore, owner: str, batch_id: str,
                  expired: bool) -> SplitFiles:
    """Publish the successful lines as the output file and the failed ones as the error file (an empty one is
    left out, as OpenAI does)."""
    with tempfile.TemporaryDirectory(prefix="dscbatch-batch-") as folder:
        good, bad = Path(folder, "output"), Path(folder, "errors")
        completed = failed = 0
        with good.open("w", encoding="utf-8") as output, bad.open("w", encoding="utf-8") as errors:
            for text in result_lines(store, status, partial=True):
                line = text + "\n"
                record = json.loads(line)
                if record.get("error") is None:
                    output.write(line)
                    completed += 1
                    continue
                if expired and record["error"].get("code") in NOT_RUN_CODES:
                    line = json.dumps({**record, "error": EXPIRED}, ensure_ascii=False) + "\n"
                errors.write(line)
                failed += 1
        return SplitFiles(_publish(files, good, owner, f"{batch_id}_output.jsonl") if completed else None,
                          _publish(files, bad, owner, f"{batch_id}_error.jsonl") if failed else None,
                          completed, failed)


def _publish(files: FileStore, path: Path, owner: str, filename: str) -> str:
    with files.writing(owner, filename, "batch_output") as (stream, published), path.open("rb") as source:
        while chunk := source.read(1 << 20):
            stream.write(chunk)
    return published[0].id

"""Batches: each one is a dscbatch job (same queues, workers, prefix order and dedup), with a small record in
Redis for what the Batch API adds (owner, endpoint, its files, timestamps).

A batch is ``validating`` while its file is checked and submitted, then ``in_progress`` while items are pending.
Batches move on without readers: the server's advancer (``server/advancer.py``) looks at every batch that has not
ended about once a second. Once the job has a result for every item a worker writes its results file, and the
advancer splits it into the batch's output and error files and marks it ``completed`` (``finalizing`` in between,
from the job's end: its ``finalizing_at``). A cancelled batch is ``cancelling`` while workers still run its shards,
then ``cancelled``; one not settled within its 24 h window is cancelled and ``expired``, its unfinished items
``batch_expired`` records in the error file. Reading a batch (GET, list) writes nothing.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dscbatch.core.errors import ApiError, ConflictApiError, DscbatchError, InvalidInputError
from dscbatch.core.settings import Settings
from dscbatch.jobs import objectstore
from dscbatch.jobs.reader import MAX_REPORTED_PROBLEMS, FileCheck, Line, check_file
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import SubmitOptions, submit_job
from dscbatch.jobs.tokenizer import ModelTokenizer, model_name
from dscbatch.server.files import FileStore
from dscbatch.server.models import (
    COMPLETION_WINDOW_SECONDS,
    ENDPOINT_OF_TYPE,
    Batch,
    BatchCreate,
    BatchError,
    Page,
    RequestCounts,
)
from dscbatch.server.outputs import split_results

if TYPE_CHECKING:
    from dscbatch.core.celery_app import ShardQueue

# Under the files store, each batch's job gets a folder for its results file.
JOBS_FOLDER = "jobs"
FINAL = frozenset({"failed", "completed", "expired", "cancelled"})
TIMESTAMPS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
              "cancelled_at")


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Validated:
    model: str | None  # the served model every line asked for
    errors: list[BatchError]
    check: FileCheck | None = None  # the file's validation pass, which the job's submission reuses


class BatchService:
    def __init__(self, settings: Settings, store: JobStore, files: FileStore, models: dict[str, str],
                 enqueuer: Callable[[], AbstractContextManager[ShardQueue]]) -> None:
        """``models``: the models batches may name, by name (``model_name``) to directory or hub id;
        ``enqueuer()``: a context manager giving a ``ShardQueue`` for one submission."""
        self.settings = settings
        self.store = store
        self.files = files
        self.models = models
        self.enqueuer = enqueuer
        self.records = store.owned_records("batch")  # jobs/store/records.py
        self._tokenizers: dict[str, ModelTokenizer] = {}  # loaded once per model, shared by every batch

    def _tokenizer(self, name: str) -> ModelTokenizer:
        if name not in self._tokenizers:
            self._tokenizers[name] = ModelTokenizer.load(self.models[name])
        return self._tokenizers[name]

    # Creating

    def create(self, owner: str, request: BatchCreate) -> Batch:
        source = self.files.get(request.input_file_id, owner)
        if source.purpose != "batch":
            raise ApiError(f"input_file_id: {source.id} is a {source.purpose} file, not an uploaded batch file",
                           param="input_file_id")
        batch_id, created = new_batch_id(), int(time.time())
        self.records.create(batch_id, owner, created, {
            "status": "validating", "endpoint": request.endpoint, "input_file_id": request.input_file_id,
            "completion_window": request.completion_window, "metadata": json.dumps(request.metadata),
            "expires_at": created + COMPLETION_WINDOW_SECONDS})
        folder = Path(tempfile.mkdtemp(prefix="dscbatch-input-"))
        try:
            path = folder / "input.jsonl"
            with self.files.open(source.id, owner) as stream, path.open("wb") as local:
                shutil.copyfileobj(stream, local, 1 << 20)
            self._submit(batch_id, request, path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return self.get(batch_id, owner)

    def _submit(self, batch_id: str, request: BatchCreate, path: Path) -> None:
        checked = self._validate(path, request.endpoint)
        if checked.errors or checked.model is None:
            self._fail(batch_id, checked.errors)
            return
        # Lines valid in form are submitted; one the model cannot serve (a prompt over its context) becomes an
        # error record in the error file, as a failed request does at OpenAI.
        options = SubmitOptions(model=self.models[checked.model], skip_invalid=True,
                                shard_max_requests=self.settings.shard_max_requests,
                                shard_max_tokens=self.settings.shard_max_tokens,
                                output_root=objectstore.join(self.settings.files_url, JOBS_FOLDER),
                                source=f"{request.input_file_id} (batch {batch_id})")
        try:
            with self.enqueuer() as enqueue:
                job_id = submit_job(self.store, enqueue, path, options, check=checked.check,
                                    tokenizer=self._tokenizer(checked.model), waiting=enqueue.waiting)
        except DscbatchError as error:
            self._fail(batch_id, [BatchError(code="invalid_request", message=str(error))])
            return
        self.records.update(batch_id, {"status": "in_progress", "job_id": job_id, "model": checked.model,
                                       "in_progress_at": int(time.time())})
        self.store.activate_batch(batch_id)

    def _fail(self, batch_id: str, errors: list[BatchError]) -> None:
        self.records.update(batch_id, {"status": "failed", "failed_at": int(time.time()),
                                       "errors": json.dumps([error.model_dump() for error in errors])})

    def _validate(self, path: Path, endpoint: str) -> Validated:
        """The batch's own checks of each line, in the one validation pass its job's submission then reuses."""
        errors: list[BatchError] = []
        model: tuple[str, int] | None = None  # the model, and the line that named it first

        def visit(line: Line) -> None:
            nonlocal model
            if len(errors) >= MAX_REPORTED_PROBLEMS:
                return
            problems = self._line_problems(line, endpoint)
            if not problems and line.request is not None:
                name, problem = self._model_of(line, model)
                model = model or (name, line.number)
                problems = [problem] if problem else []
            errors.extend(problems[: MAX_REPORTED_PROBLEMS - len(errors)])

        try:
            check = check_file(path, on_line=visit)
        except InvalidInputError:
            return Validated(None, [BatchError(code="empty_file", message="the input file holds no requests")])
        except DscbatchError as error:
            return Validated(None, [BatchError(code="invalid_file", message=str(error))])
        count = check.requests + check.invalid_lines
        if count > self.settings.max_batch_lines:
            errors.append(BatchError(code="too_many_requests", message=(
                f"the batch has {count} requests, over the limit of {self.settings.max_batch_lines} "
                "(DSCBATCH_MAX_BATCH_LINES)")))
        return Validated(model[0] if model else None, errors, check)

    @staticmethod
    def _line_problems(line: Line, endpoint: str) -> list[BatchError]:
        problems = [BatchError(code="invalid_request", line=line.number, param=problem.field,
                               message=f"line {line.number}: {problem.field}: {problem.message}")
                    for problem in line.problems]
        if not line.openai:
            problems.append(BatchError(code="invalid_request", line=line.number, param="custom_id",
                                       message=f"line {line.number}: not a Batch API request line (custom_id, "
                                               "method, url, body)"))
        elif line.request is not None and ENDPOINT_OF_TYPE.get(line.request.type) != endpoint:
            problems.append(BatchError(
                code="invalid_url", line=line.number, param="url",
                message=f"line {line.number}: url: the line is for {ENDPOINT_OF_TYPE[line.request.type]}, "
                        f"but the batch's endpoint is {endpoint}"))
        return problems

    def _model_of(self, line: Line, first: tuple[str, int] | None) -> tuple[str, BatchError | None]:
        served = ", ".join(sorted(self.models)) or "none"
        if line.model is None and len(self.models) != 1:
            return "", BatchError(code="invalid_request", line=line.number, param="body.model",
                                  message=f"line {line.number}: body.model: required (served: {served})")
        name = model_name(line.model) if line.model is not None else next(iter(self.models))
        if name not in self.models:
            return name, BatchError(code="model_not_found", line=line.number, param="body.model",
                                    message=f"line {line.number}: body.model: {line.model!r} is not served here "
                                            f"(served: {served})")
        if first is not None and first[0] != name:
            return name, BatchError(code="invalid_request", line=line.number, param="body.model",
                                    message=f"line {line.number}: body.model: a batch runs one model, and line "
                                            f"{first[1]} asked for {first[0]!r}, not {name!r}")
        return name, None

    # Reading: only reads (the advancer moves batches on)

    def get(self, batch_id: str, owner: str) -> Batch:
        return self._view(batch_id, self.records.get(batch_id, owner))

    def list(self, owner: str, limit: int, after: str | None) -> Page[Batch]:
        ids, has_more = self.records.page(owner, limit, after)
        return Page[Batch].of([self.get(batch_id, owner) for batch_id in ids], ids, has_more)

    def cancel(self, batch_id: str, owner: str) -> Batch:
        record = self.records.get(batch_id, owner)
        if record["status"] in FINAL or record["status"] == "validating" or self._settled(record):
            status = "finalizing" if self._settled(record) else record["status"]
            raise ConflictApiError(f"Cannot cancel a batch with status {status!r}", code="batch_not_cancellable")
        if record["status"] == "in_progress":
            self.store.cancel(record["job_id"])
            self.records.update(batch_id, {"status": "cancelling", "cancelling_at": int(time.time())})
        return self.get(batch_id, owner)

    def _settled(self, record: dict[str, str]) -> bool:
        """An ``in_progress`` batch whose job has a result for every item: the advancer finalizes it next."""
        return record["status"] == "in_progress" and self.store.status(record["job_id"]).pending == 0

    # Advancing (server/advancer.py, one server at a time)

    def advance(self, batch_id: str) -> str:
        """Move the batch on to where its job is now (its files written once the job's results file is);
        returns its status."""
        record = self.records.read(batch_id)
        if record.get("status") not in ("in_progress", "cancelling"):
            self.store.deactivate_batch(batch_id)  # ended, or deleted
            return record.get("status", "deleted")
        job = self.store.status(record["job_id"])
        if record["status"] == "cancelling":
            if self.store.running_shards(job.id):
                return "cancelling"
            return self._finalize(batch_id, record, "cancelled")
        if job.pending == 0:
            # The job's results file (written by a worker when the job settles) is what the batch's files split.
            return self._finalize(batch_id, record, "completed") if job.results_url is not None else "finalizing"
        if time.time() >= int(record["expires_at"]):
            self.store.cancel(job.id)
            return self._finalize(batch_id, record, "expired")
        return "in_progress"

    def _finalize(self, batch_id: str, record: dict[str, str], final: str) -> str:
        job = self.store.status(record["job_id"])
        now = int(time.time())
        # The batch's timestamps are its job's: finalizing from the job's end, completed once its files exist.
        finalizing = int(job.finished) if job.finished and final == "completed" else now
        self.records.update(batch_id, {"finalizing_at": finalizing})
        split = split_results(self.store, job, self.files, record["owner"], batch_id, final == "expired")
        fields: dict[str, str | int] = {"status": final, f"{final}_at": int(time.time()), "total": job.total,
                                        "completed": split.completed, "failed": split.failed}
        fields.update({name: value for name, value in (("output_file_id", split.output_file_id),
                                                       ("error_file_id", split.error_file_id)) if value})
        self.records.update(batch_id, fields)
        self.store.deactivate_batch(batch_id)
        return final

    def _view(self, batch_id: str, record: dict[str, str]) -> Batch:
        if self._settled(record):  # the advancer writes its files within a round
            job = self.store.status(record["job_id"])
            record = {**record, "status": "finalizing", "finalizing_at": str(int(job.finished or time.time()))}
        status = record["status"]
        if status in FINAL and "total" in record:
            counts = RequestCounts(total=int(record["total"]), completed=int(record["completed"]),
                                   failed=int(record["failed"]))
        elif "job_id" in record:
            job = self.store.status(record["job_id"])
            counts = RequestCounts(total=job.total, completed=job.done, failed=job.failed)
        else:
            counts = RequestCounts()
        return Batch.model_validate({
            **{name: record[name] for name in ("endpoint", "input_file_id", "status", "created_at", "expires_at",
                                               *TIMESTAMPS, "model", "output_file_id", "error_file_id")
               if name in record},
            "id": batch_id, "request_counts": counts, "metadata": json.loads(record.get("metadata") or "null"),
            "errors": {"data": json.loads(record["errors"])} if "errors" in record else None})

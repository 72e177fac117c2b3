"""Submitting a job: validate, render, cut into shards, store them, then enqueue, all streaming.

The file is read twice: a cheap validation pass first (strict mode refuses the job before anything is
written), then the rendering pass that stores shards as it goes. Memory holds one shard at a time.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dscbatch.jobs.errors import InvalidInputError, RequestError
from dscbatch.jobs.reader import (
    DEFAULT_MAX_LINE_BYTES,
    MAX_REPORTED_PROBLEMS,
    check_file,
    read_lines,
    require_valid,
)
from dscbatch.jobs.rendering import Renderer
from dscbatch.jobs.requests import Params
from dscbatch.jobs.results import ItemInfo, result_line
from dscbatch.jobs.store import JobStore, ResultEntry
from dscbatch.jobs.tokenizer import ModelTokenizer, model_name

Enqueue = Callable[[str, str, str], None]  # (queue, job id, shard key)
Progress = Callable[[int], None]  # lines read so far


def queue_name(prefix: str, model: str) -> str:
    """One queue per model, so pools of different models share one Redis."""
    return f"{prefix}.{model_name(model)}"


def new_job_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class SubmitOptions:
    model: str
    defaults: Params = Params()
    skip_invalid: bool = False
    echo_prompt: bool = False
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_model_len: int | None = None
    shard_max_requests: int = 256
    shard_max_tokens: int = 1 << 20


@dataclass
class _ShardBuilder:
    store: JobStore
    job_id: str
    header: dict[str, Any]
    options: SubmitOptions
    items: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    keys: list[str] = field(default_factory=list)

    def add(self, item: dict[str, Any]) -> None:
        self.items.append(item)
        self.tokens += len(item["ids"])
        if len(self.items) >= self.options.shard_max_requests or self.tokens >= self.options.shard_max_tokens:
            self.flush()

    def flush(self) -> None:
        if self.items:
            payload = {**self.header, "items": self.items}
            self.keys.append(self.store.save_shard(self.job_id, len(self.keys), payload))
            self.items, self.tokens = [], 0


def submit_job(store: JobStore, enqueue: Enqueue, path: str | Path, options: SubmitOptions,
               progress: Progress | None = None) -> str:
    """Create the job and enqueue its shards; returns the job id. Raises InvalidInputError in strict mode."""
    check = check_file(path, max_line_bytes=options.max_line_bytes)
    if not options.skip_invalid:
        require_valid(check)
    tokenizer = ModelTokenizer.load(options.model)
    renderer = Renderer(tokenizer, options.defaults, options.max_model_len)
    job_id = new_job_id()
    name = model_name(options.model)
    created = int(time.time())
    header = {"job": job_id, "model": name, "stop": tokenizer.stop_token_ids, "created": created}
    shards = _ShardBuilder(store, job_id, header, options)
    errors: list[ResultEntry] = []
    refused: list[str] = []
    total = 0
    for index, line in enumerate(read_lines(path, max_line_bytes=options.max_line_bytes)):
        total = index + 1
        if progress is not None and total % 1000 == 0:
            progress(total)
        request = line.request
        kind = request.type if request is not None else "invalid"
        info = ItemInfo(index, line.id, kind, line.openai, request.metadata if request is not None else None)
        try:
            if request is None:
                raise RequestError("invalid_request", "; ".join(f"{p.field}: {p.message}" for p in line.problems))
            rendered = renderer.render(request)
        except RequestError as error:
            if not options.skip_invalid:  # strict: a line the model cannot serve refuses the job too
                refused.append(f"{path}:{line.number}: {kind}: {error.code}: {error.message}")
                continue
            text = result_line(info, model=name, job_id=job_id, created=created, error_code=error.code,
                               error_message=error.message)
            errors.append(ResultEntry(index, text, "failed"))
            if len(errors) >= 1000:
                store.record(job_id, errors)
                errors = []
            continue
        item: dict[str, Any] = {"i": index, "id": line.id, "type": kind, "ids": rendered.prompt_token_ids,
                                "params": rendered.params.model_dump(exclude_none=True)}
        if line.openai:
            item["openai"] = True
        if request.metadata is not None:
            item["metadata"] = request.metadata
        if options.echo_prompt:
            item["prompt"] = rendered.prompt
        shards.add(item)
    if refused:
        store.delete_job(job_id)
        raise InvalidInputError(refused[:MAX_REPORTED_PROBLEMS], len(refused))
    shards.flush()
    store.record(job_id, errors)
    queue = queue_name(store.prefix, options.model)
    store.create_job(job_id, {
        "model": name, "queue": queue, "input": str(path), "sha256": check.sha256, "created": created,
        "total": total, "shards": len(shards.keys),
        "options": {"defaults": options.defaults.model_dump(exclude_none=True), "echo_prompt": options.echo_prompt,
                    "skip_invalid": options.skip_invalid, "invalid_lines": check.invalid_lines},
    })
    for key in shards.keys:
        enqueue(queue, job_id, key)
    store.confirm_durable()  # the job id is reported only once Redis has it on disk
    if progress is not None:
        progress(total)
    return job_id

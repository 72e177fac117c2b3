"""Submitting a job: validate, render, group by prefix, cut into shards, store them, then enqueue.

The file is read twice: a cheap validation pass first (strict mode refuses the job before anything is
written), then the rendering pass, whose items an external sort puts in prefix order (``grouping``) before
they are cut into shards. Memory stays bounded: the sort spills to disk, and one shard is held at a time.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dscbatch.core.errors import InvalidInputError, RequestError
from dscbatch.core.keys import Keys
from dscbatch.jobs import objectstore
from dscbatch.jobs.grouping import PrefixSorter, cut_shards
from dscbatch.jobs.reader import (
    DEFAULT_MAX_LINE_BYTES,
    MAX_REPORTED_PROBLEMS,
    FileCheck,
    Line,
    check_file,
    read_lines,
    require_valid,
)
from dscbatch.jobs.rendering import RenderedRequest, Renderer
from dscbatch.jobs.requests import Params, Request
from dscbatch.jobs.results import ItemInfo, result_line
from dscbatch.jobs.store import JobStore, ResultEntry
from dscbatch.jobs.store.specs import SPEC_CHUNK_ITEMS
from dscbatch.jobs.tokenizer import ModelTokenizer, model_name

Enqueue = Callable[[str, str, str], None]  # (queue, job id, shard key)
# Lines rendered, and tokenized in one batch on all cores, at a time.
RENDER_CHUNK = 256
Progress = Callable[[int], None]  # lines read so far


def queue_name(prefix: str, model: str) -> str:
    """One queue per model, so pools of different models share one Redis."""
    return Keys(prefix).queue(model_name(model))


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
    group_prefixes: bool = True  # sort the job by prompt ids (else shards follow the file's order)
    dedup: bool = True  # run identical deterministic requests once
    source: str | None = None  # what the job record names as its input (default: the path)
    output_url: str | None = None  # a folder: a worker writes the results file there when the job settles
    output_root: str | None = None  # a folder under which the job gets a folder named by its id (the setting)
    output_parts: str | None = None  # "jsonl" or "parquet": the results also as parts (``jobs.dataset``)


def submit_job(store: JobStore, enqueue: Enqueue, path: str | Path, options: SubmitOptions,
               progress: Progress | None = None, *, check: FileCheck | None = None,
               tokenizer: ModelTokenizer | None = None) -> str:
    """Create the job and enqueue its shards; returns the job id. Raises InvalidInputError in strict mode.
    ``check``: the file's validation pass when the caller has made it; ``tokenizer``: the model's, when the
    caller holds it loaded (a server submitting many jobs)."""
    check = check or check_file(path, max_line_bytes=options.max_line_bytes)
    if not options.skip_invalid:
        require_valid(check)
    store.work.check_writable()
    job = _Rendering(store, path, options, progress, tokenizer or ModelTokenizer.load(options.model))
    with PrefixSorter(dedup=options.dedup) as sorter:
        ordered = sorter.order(job.items()) if options.group_prefixes else job.items()
        shards = cut_shards(ordered, options.shard_max_requests, options.shard_max_tokens)
        try:
            keys = store.save_shards(job.id, ({**job.header, "items": items} for items in shards
                                              if not job.refused))
        except BaseException:
            store.delete_job(job.id)  # the shards saved before the failure
            raise
    if job.refused:
        store.delete_job(job.id, shards=len(keys))
        raise InvalidInputError(job.refused[:MAX_REPORTED_PROBLEMS], len(job.refused))
    store.record(job.id, job.errors)
    queue = queue_name(store.prefix, options.model)
    store.create_job(job.id, {
        "model": job.header["model"], "queue": queue, "input": options.source or str(path), "sha256": check.sha256,
        "created": job.header["created"], "total": job.total, "shards": len(keys), "deduplicated": sorter.folded,
        "output_url": options.output_url or (objectstore.join(options.output_root, job.id) if options.output_root
                                             else None),
        "stop": job.header["stop"],
        "options": {"defaults": options.defaults.model_dump(exclude_none=True), "echo_prompt": options.echo_prompt,
                    "skip_invalid": options.skip_invalid, "invalid_lines": check.invalid_lines,
                    "group_prefixes": options.group_prefixes, "dedup": options.dedup,
                    "output_parts": options.output_parts},
    })
    for key in keys:
        enqueue(queue, job.id, key)
    store.confirm_durable()  # the job id is reported only once Redis has it on disk
    if progress is not None:
        progress(job.total)
    return job.id


class _Rendering:
    """The rendering pass: shard items for the lines the model can serve, error records for the others."""

    def __init__(self, store: JobStore, path: str | Path, options: SubmitOptions, progress: Progress | None,
                 tokenizer: ModelTokenizer) -> None:
        self.store = store
        self.path = path
        self.options = options
        self.progress = progress
        self.tokenizer = tokenizer
        self.renderer = Renderer(self.tokenizer, options.defaults, options.max_model_len)
        self.id = new_job_id()
        self.header: dict[str, Any] = {"job": self.id, "model": model_name(options.model),
                                       "stop": self.renderer.stop_token_ids, "created": int(time.time())}
        self.errors: list[ResultEntry] = []  # error records not yet stored (skip-invalid mode)
        self.specs: dict[int, str] = {}  # verify specs not yet stored, saved a work-folder file at a time
        self.refused: list[str] = []  # strict mode: lines the model cannot serve refuse the job
        self.total = 0

    def items(self) -> Iterator[dict[str, Any]]:
        """Shard items in input order. A thread renders (tokenizes) the next chunk while this one reads the
        chunk after it and builds the items of the one before: the tokenizer runs without the GIL, so reading,
        rendering and tokenizing overlap on every core."""
        lines = enumerate(read_lines(self.path, max_line_bytes=self.options.max_line_bytes))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dscbatch-render") as renderer:
            chunk = list(itertools.islice(lines, RENDER_CHUNK))
            rendering = renderer.submit(self._render, chunk)
            while chunk:
                following = list(itertools.islice(lines, RENDER_CHUNK))
                rendered = rendering.result()
                rendering = renderer.submit(self._render, following)
                yield from self._chunk_items(chunk, rendered)
                self.total = chunk[-1][0] + 1
                if self.total % SPEC_CHUNK_ITEMS == 0:
                    self._save_specs()
                if self.progress is not None:
                    self.progress(self.total)
                chunk = following
        self._save_specs()

    def _save_specs(self) -> None:
        if self.specs:
            self.store.save_verify_specs(self.id, self.specs)
            self.specs = {}

    def _render(self, chunk: list[tuple[int, Line]]) -> list[RenderedRequest | RequestError]:
        # Every prompt of the chunk's lines, tokenized in one batch; a line with several gets one item for all.
        return self.renderer.render_many([request for _, line in chunk for request in line.requests])

    def _chunk_items(self, chunk: list[tuple[int, Line]],
                     rendered_requests: list[RenderedRequest | RequestError]) -> Iterator[dict[str, Any]]:
        rendered = iter(rendered_requests)
        for index, line in chunk:
            request = line.request
            kind = request.type if request is not None else "invalid"
            prompts = [next(rendered) for _ in line.requests]
            result = next((each for each in prompts if isinstance(each, RequestError)), None)
            if request is None:
                result = RequestError("invalid_request", "; ".join(f"{p.field}: {p.message}" for p in line.problems))
            if result is not None:
                self._refuse(line.number, index, line.id, kind, line.openai, request, result)
                continue
            assert request is not None
            first, *more = (each for each in prompts if not isinstance(each, RequestError))
            item: dict[str, Any] = {"i": index, "id": line.id, "type": kind, "ids": first.prompt_token_ids,
                                    "params": first.params.model_dump(exclude_none=True)}
            if more:
                item["more"] = [each.prompt_token_ids for each in more]
            if line.openai:
                item["openai"] = True
            if request.metadata is not None:
                item["metadata"] = request.metadata
            if self.options.echo_prompt:
                item["prompt"] = [first.prompt, *(each.prompt for each in more)] if more else first.prompt
            if request.verify is not None:
                item["verify"] = True
                self.specs[index] = request.verify.model_dump_json()
            yield item

    def _refuse(self, number: int, index: int, custom_id: str, kind: str, openai: bool, request: Request | None,
                error: RequestError) -> None:
        if not self.options.skip_invalid:
            self.refused.append(f"{self.path}:{number}: {kind}: {error.code}: {error.message}")
            return
        info = ItemInfo(index, custom_id, kind, openai, request.metadata if request is not None else None)
        self.errors.append(ResultEntry(index, result_line(
            info, model=self.header["model"], job_id=self.id, created=self.header["created"],
            error_code=error.code, error_message=error.message), "failed"))
        if len(self.errors) >= 1000:
            self.store.record(self.id, self.errors)
            self.errors = []

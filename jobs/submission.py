"""Submitting a job: create its record, then render, group by prefix, cut into shards and queue each one as
soon as it is cut, so the pool starts while the file is still being read.

The record exists from the start in the ``submitting`` state: ``status`` shows the lines read so far, and the
job cannot settle, since it has no ``total`` until the last line is read (``JobStore.submitted``). Grouping
streams (``partitioning``): a prefix partition is cut into shards once it holds four shards' worth, the rest is
sorted at the end of the file as a whole. Memory stays bounded: partitions and the final sort spill to disk,
and one shard is held at a time.

Validation, in strict mode (no ``skip_invalid``): by default a bad line found while the file streams stops the
submission at once; the job is cancelled and deleted (its shards and work folder too), and the bad lines read
so far are reported. ``validate_first`` reads the whole file once before anything else and queues no shard
before the last line is rendered: nothing runs unless the whole file is good. Each shard is a chance to stop:
a job cancelled or deleted while it is submitted ends the submission (``SubmissionCancelledError``).
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dscbatch.core.errors import InvalidInputError, RequestError, StorageError, SubmissionCancelledError
from dscbatch.core.keys import Keys
from dscbatch.jobs import objectstore
from dscbatch.jobs.byteranges import stat_input
from dscbatch.jobs.fileformat import is_parquet
from dscbatch.jobs.grouping import cut_shards
from dscbatch.jobs.partitioning import StreamingGrouper
from dscbatch.jobs.reader import (
    DEFAULT_MAX_LINE_BYTES,
    MAX_REPORTED_PROBLEMS,
    FileCheck,
    Line,
    check_file,
    file_digest,
    read_lines,
    require_input,
    require_valid,
)
from dscbatch.jobs.rendering import RenderedRequest, Renderer
from dscbatch.jobs.requests import Params, Request
from dscbatch.jobs.results import ItemInfo, result_line
from dscbatch.jobs.store import JobStore, ResultEntry
from dscbatch.jobs.store.specs import SPEC_CHUNK_ITEMS
from dscbatch.jobs.tokenizer import ModelTokenizer, model_name

Enqueue = Callable[[str, str, str], None]  # (queue, job id, shard key)
# The first shard waits for the end of the file (all of it grouped by one sort: the best hit rate) where the
# file is expected to be read within this many seconds of the rendering's start; a longer one is cut as its
# prefix partitions fill (``StreamingGrouper``'s ``soon``).
FIRST_SHARD_SECONDS = 5.0
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
    validate_first: bool = False  # strict mode checks the whole file before any shard is queued
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

    def record_options(self, invalid_lines: int) -> dict[str, Any]:
        """What the job record keeps of these options."""
        return {"defaults": self.defaults.model_dump(exclude_none=True), "echo_prompt": self.echo_prompt,
                "skip_invalid": self.skip_invalid, "invalid_lines": invalid_lines,
                "group_prefixes": self.group_prefixes, "dedup": self.dedup, "output_parts": self.output_parts}


def submit_job(store: JobStore, enqueue: Enqueue, path: str | Path, options: SubmitOptions,
               progress: Progress | None = None, *, check: FileCheck | None = None,
               tokenizer: ModelTokenizer | None = None, waiting: Callable[[str], int] | None = None) -> str:
    """Create the job and queue its shards as they are cut; returns the job id. Raises InvalidInputError in
    strict mode (the job is removed), SubmissionCancelledError when the job is cancelled or deleted meanwhile.
    ``check``: the file's validation pass when the caller has made it; ``tokenizer``: the model's, when the
    caller holds it loaded (a server submitting many jobs); ``waiting``: how many messages of a queue wait for
    a worker (``ShardQueue.waiting``): while the job's queue has some, prefix partitions wait for the end of
    the file rather than being cut (``StreamingGrouper``'s ``fed``)."""
    if check is None and options.validate_first:
        check = check_file(path, max_line_bytes=options.max_line_bytes)
    if check is None:
        require_input(path)
    elif not options.skip_invalid:
        require_valid(check)
    store.work.check_writable()
    job = Rendering(store, path, options, progress, tokenizer or ModelTokenizer.load(options.model))
    queue = queue_name(store.prefix, options.model)
    store.create_job(job.id, {
        "model": job.header["model"], "queue": queue, "input": options.source or str(path),
        "created": job.header["created"], "stop": job.header["stop"],
        "output_url": options.output_url or (objectstore.join(options.output_root, job.id) if options.output_root
                                             else None),
        "options": options.record_options(check.invalid_lines if check is not None else 0),
    })
    held: list[str] = []  # validate-first: shards wait until the whole file is rendered
    def fed() -> bool:  # validate-first: nothing runs before the end of the file, which may as well group it
        return options.validate_first or (waiting is not None and waiting(queue) > 0)

    def soon() -> bool:
        return options.validate_first or job.ends_within(FIRST_SHARD_SECONDS)

    with StreamingGrouper(options.shard_max_requests, options.shard_max_tokens, options.dedup, fed=fed,
                          soon=soon) as grouper:
        saved = _saved(store, job, (({**job.header, "items": items}, last) for items, last in
                                    _shards(job, grouper, options)))
        try:
            for key in saved:
                if store.submission_step(job.id, job.total):
                    raise SubmissionCancelledError(job.id, job.total, job.queued)
                if options.validate_first:
                    held.append(key)
                else:
                    enqueue(queue, job.id, key)
                    job.queued += 1
            if job.refused:
                raise InvalidInputError(job.refused[:MAX_REPORTED_PROBLEMS], len(job.refused),
                                        cancelled_job=job.id if job.queued else None)
            if job.total == 0:
                raise InvalidInputError([f"{path}: the file holds no requests (it is empty or only blank lines)"], 1)
            store.record(job.id, job.errors)
            store.submitted(job.id, {
                "total": job.total, "deduplicated": grouper.folded,
                "sha256": check.sha256 if check is not None else job.sha256(),
                "options": options.record_options(check.invalid_lines if check is not None else job.invalid)})
        except BaseException as error:
            saved.close()  # waits for the shard being stored
            if isinstance(error, SubmissionCancelledError) and store.is_cancelled(job.id):
                store.submitted(job.id, {"total": job.total})  # cancelled: the record stays, the lines read its total
            else:  # refused, failed or deleted: everything of it goes (a worker holding a shard of it stops first)
                store.cancel_if_present(job.id)
                store.delete_job(job.id, shards=job.reserved)
            raise
    for key in held:
        enqueue(queue, job.id, key)
    store.confirm_durable()  # the job id is reported only once Redis has it on disk
    if progress is not None:
        progress(job.total)
    return job.id


def _shards(job: Rendering, grouper: StreamingGrouper,
            options: SubmitOptions) -> Iterator[tuple[list[dict[str, Any]], bool]]:
    """Shards in the order they can be queued: as prefix partitions fill, or in the file's order; each with
    whether it is the last that is ready before more of the file is rendered. None more once a bad line stops
    a strict submission."""
    if not options.group_prefixes:
        for shard in cut_shards(job.items(), options.shard_max_requests, options.shard_max_tokens):
            if job.stopped:
                return
            yield shard, False
        return
    for item in job.items():
        ready = grouper.add(item)
        for number, shard in enumerate(ready, 1):
            yield shard, number == len(ready)
    if not job.stopped:
        for shard in grouper.finish():
            yield shard, False


def _saved(store: JobStore, job: Rendering, payloads: Iterable[tuple[dict[str, Any], bool]]) -> Generator[str]:
    """Each payload stored as the job's next shard (its number reserved first, so a delete finds it); yields
    its key once it is stored. A thread stores each while the caller makes the next; one marked last (no other
    is ready before more of the file is rendered: the first shard, cut while the file is read) is waited for
    and yielded at once, not when the next comes, which may be the end of the file."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dscbatch-shards") as saver:
        saving: tuple[str, Any] | None = None
        for payload, last in payloads:
            number, job.reserved = job.reserved, job.reserved + 1
            store.count_shards(job.id, job.reserved)
            key = store.shard_key(job.id, number)
            following = (key, saver.submit(store.save_shard, key, payload))
            if saving is not None:
                saving[1].result()
                yield saving[0]
            saving = following
            if last:
                saving[1].result()
                yield saving[0]
                saving = None
        if saving is not None:
            saving[1].result()
            yield saving[0]


class Rendering:
    """The rendering pass: shard items for the lines the model can serve, error records for the others."""

    def __init__(self, store: JobStore, path: str | Path, options: SubmitOptions, progress: Progress | None,
                 tokenizer: ModelTokenizer, header: dict[str, Any] | None = None,
                 range_of: tuple[int, int] | None = None) -> None:
        self.store = store
        self.path = path
        # (number, first item index) of the one range of a job rendered on the cluster that this renders: its
        # caller stores its error records once (a range may be rendered twice), its verify specs go to files of
        # the range's own, counted from its first index (``JobStore.save_range_verify_specs``)
        self.range_of = range_of
        self.spec_base = range_of[1] if range_of is not None else 0
        self.options = options
        self.progress = progress
        self.tokenizer = tokenizer
        self.renderer = Renderer(self.tokenizer, options.defaults, options.max_model_len)
        # ``header``: the shard header of a job created before (a range of it rendered on the cluster)
        self.header: dict[str, Any] = header or {"job": new_job_id(), "model": model_name(options.model),
                                                 "stop": self.renderer.stop_token_ids, "created": int(time.time())}
        self.id = str(self.header["job"])
        self.errors: list[ResultEntry] = []  # error records not yet stored (skip-invalid mode)
        self.specs: dict[int, str] = {}  # verify specs not yet stored, saved a work-folder file at a time
        self.refused: list[str] = []  # strict mode: lines the model cannot serve refuse the job
        self.total = 0  # lines read (and rendered) so far
        self.invalid = 0  # of those, lines that are not requests
        self.queued = 0  # shards queued so far
        self.reserved = 0  # shard numbers taken so far
        self._digest = hashlib.sha256()
        self._read_bytes = 0  # of a JSONL file, read so far
        self._size: int | None = None  # the JSONL file's size, once ``ends_within`` asked
        self._started = time.monotonic()

    def items(self, source: Iterator[tuple[int, Line]] | None = None) -> Iterator[dict[str, Any]]:
        """Shard items in input order, of ``source`` (item index, line) or else the whole file. A thread
        renders (tokenizes) the next chunk while this one reads the chunk after it and builds the items of the
        one before: the tokenizer runs without the GIL, so reading, rendering and tokenizing overlap on every
        core."""
        lines = source or enumerate(read_lines(self.path, max_line_bytes=self.options.max_line_bytes,
                                               on_bytes=self._read))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dscbatch-render") as renderer:
            chunk = list(itertools.islice(lines, RENDER_CHUNK))
            rendering = renderer.submit(self._render, chunk)
            while chunk:
                following = list(itertools.islice(lines, RENDER_CHUNK))
                rendered = rendering.result()
                rendering = renderer.submit(self._render, following)
                yield from self._chunk_items(chunk, rendered)
                self.total = chunk[-1][0] + 1
                if (self.total - self.spec_base) % SPEC_CHUNK_ITEMS == 0:  # each spec file's specs at once
                    self._save_specs()
                if self.progress is not None:
                    self.progress(self.total)
                if self.stopped:
                    return
                chunk = following
        self._save_specs()

    def _read(self, data: bytes) -> None:
        self._digest.update(data)
        self._read_bytes += len(data)

    def ends_within(self, seconds: float) -> bool:
        """Whether the whole file is expected to be read within ``seconds`` of the rendering's start, at the rate
        read so far (False where that is not known: a Parquet file, whose reader reports no bytes, a store that
        gives no size, nothing read yet)."""
        if not self._read_bytes:
            return False
        if self._size is None:
            try:
                self._size = stat_input(str(self.path)).size
            except StorageError:
                self._size = 0  # not known: the file streams as if it were long
        return self._size > 0 and (time.monotonic() - self._started) * self._size / self._read_bytes <= seconds

    def _save_specs(self) -> None:
        if not self.specs:
            return
        if self.range_of is None:
            self.store.save_verify_specs(self.id, self.specs)
        else:
            self.store.save_range_verify_specs(self.id, *self.range_of, self.specs)
        self.specs = {}

    @property
    def stopped(self) -> bool:
        """Strict mode without validate-first stops at the first chunk with a bad line."""
        return bool(self.refused) and not self.options.validate_first

    def sha256(self) -> str:
        """The file's SHA-256, once every line is read."""
        return file_digest(str(self.path)) if is_parquet(str(self.path)) else self._digest.hexdigest()

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
                self.invalid += 1
                if not self.options.skip_invalid:
                    self.refused.extend(str(problem) for problem in line.problems)
                    continue
                result = RequestError("invalid_request", "; ".join(f"{p.field}: {p.message}" for p in line.problems))
            if result is not None:
                self._refuse(line.number, index, line.id, kind, line.openai, request, result)
                continue
            assert request is not None
            self.total = index + 1
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
        if len(self.errors) >= 1000 and self.range_of is None:
            self.store.record(self.id, self.errors)
            self.errors = []

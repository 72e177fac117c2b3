"""Rendering on the cluster (issue 23): the submitter plans and watches, render tasks on the workers do the work.

The submitter stats the input (size and ETag or mtime: ``byteranges.stat_input``), cuts it into byte ranges,
creates the job (``submitting``) with its plan in the store and queues one **count** task per range. Once
every range is counted it knows each range's first line number and item index (``byteranges.offsets``) and
queues one **render** task per range, which renders and sorts the range and writes one sorted run per
partition of the prefix keys to the work folder (``rangerender``, ``rangemerge``). Once every range is rendered
it queues one **merge** task per partition (as many as ranges, up to 64; one in input order), which merges that
partition's runs from every range, folds duplicates, cuts the shards, takes their numbers first-wins
(``JobStore.commit_range``: a task run again after its worker died gets the same numbers and rewrites the same
shards), saves and queues them: siblings anywhere in the file meet, as a full sort groups them. A task is
claimed while it runs (``JobStore.claim_range``); the heartbeat of any live worker puts the task of a dead one
back on its queue (``workers/liveness.py``), as it does a shard. The submitter's memory does not grow with the
file: it holds the plan and polls the store; its CPU grows only by the merge of the ranges' ids (``rangeids``:
1.7 s for 2,000,000 ids).

Every task checks the input's size and version against the plan: an input that changed since planning
fails the job in one line. Strict mode: a bad line found by any task cancels and deletes the job, reporting the
bad lines found (``FILE:LINE: field: message``). No shard is queued before every range is rendered and clean
and its ids checked across ranges (``rangeids``: an id used again is named as locally, and refuses the job also
with ``skip_invalid``); ``validate_first`` also holds the shards until every partition is merged. With
``skip_invalid`` a range's bad lines become error records, stored against the job's ``range_errors`` bitmap
so that a range rendered twice stores each once. A Parquet input's ranges are runs of its row groups
(``parquet.plan_row_groups``, from its footer). A cancel or delete while the cluster renders removes the job
(the items queued by then are scattered over the file, so none of it is kept). A range's ``verify`` specs go to
files of its own (``JobStore.save_range_verify_specs``: a spec file's chunk of indices may straddle ranges, and a
range may be rendered twice), found through the ranges' first item indices that the submitter stores once every
range is counted (``Ranges.save_range_bases``), before any range is rendered or any shard queued.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from dscbatch.core.errors import (
    DscbatchError,
    InvalidInputError,
    MissingDataError,
    RenderTaskError,
    StorageError,
    SubmissionCancelledError,
)
from dscbatch.jobs import objectstore
from dscbatch.jobs.byteranges import DEFAULT_RANGE_BYTES, RangeCount, count_range, offsets, plan_ranges, stat_input
from dscbatch.jobs.fileformat import is_parquet
from dscbatch.jobs.rangeids import duplicate_ids
from dscbatch.jobs.rangemerge import MAX_PARTITIONS, merge_runs
from dscbatch.jobs.rangerender import RenderStopped, render_range
from dscbatch.jobs.reader import MAX_REPORTED_PROBLEMS
from dscbatch.jobs.rendering import Renderer
from dscbatch.jobs.requests import Params
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.store.ranges import MERGE, range_task
from dscbatch.jobs.submission import Enqueue, Progress, SubmitOptions, new_job_id, queue_name
from dscbatch.jobs.tokenizer import ModelTokenizer, model_name

EnqueueRender = Callable[[str, str, int, int, int], None]  # (model queue, job id, range, first line, first index)
POLL_SECONDS = 0.1
# Times a render task may fail with an error that is not dscbatch's own (an object store's hiccup: a live worker's
# heartbeat queues it again) before the submitter gives up on the job.
MAX_RENDER_ATTEMPTS = 3


def submit_on_cluster(store: JobStore, enqueue: Enqueue, enqueue_render: EnqueueRender, path: str,
                      options: SubmitOptions, progress: Progress | None = None,
                      range_bytes: int = DEFAULT_RANGE_BYTES) -> str:
    """Create the job and have its ranges rendered by the workers; returns the job id once every range is
    rendered (and, with ``validate_first``, its shards queued). Raises as ``submit_job`` does."""
    stat = stat_input(path)
    store.work.check_writable()
    tokenizer = ModelTokenizer.load(options.model)
    renderer = Renderer(tokenizer, options.defaults, options.max_model_len)
    job_id = new_job_id()
    header = {"job": job_id, "model": model_name(options.model), "stop": renderer.stop_token_ids,
              "created": int(time.time())}
    queue = queue_name(store.prefix, options.model)
    ranges = _plan(path, stat.size, range_bytes)
    store.create_job(job_id, {
        "model": header["model"], "queue": queue, "input": options.source or path, "created": header["created"],
        "stop": header["stop"],
        "output_url": options.output_url or (objectstore.join(options.output_root, job_id) if options.output_root
                                             else None),
        "options": options.record_options(0),
    })
    partitions = min(len(ranges), MAX_PARTITIONS) if options.group_prefixes else 1
    store.save_render_plan(job_id, {"input": path, "size": stat.size, "version": stat.version, "ranges": ranges,
                                    "partitions": partitions, "header": header, "options": _options_record(options)})
    if options.skip_invalid:
        store.open_range_errors(job_id)
    merges = [len(ranges) + partition for partition in range(partitions)]  # their fields in the ranges hash
    try:
        for number in range(len(ranges)):
            enqueue_render(queue, job_id, number, 0, 0)
        counts = _await(store, job_id, "count", range(len(ranges)), progress,
                        lambda found: sum(count[1] for count in found.values()))
        total = sum(count[1] for count in counts)
        firsts = offsets([RangeCount(*count) for count in counts])
        store.save_range_bases(job_id, [index for _, index in firsts])  # where the ranges' verify specs are found
        for number, (line, index) in enumerate(firsts):
            enqueue_render(queue, job_id, number, line, index)
        rendered = _await(store, job_id, "saved", range(len(ranges)), progress,
                          lambda found: sum(counts[number][1] for number in found if number < len(ranges)))
        duplicates = [str(problem) for problem in duplicate_ids(
            path, [store.work.ids(job_id, number) for number in range(len(ranges))])]
        if duplicates:
            raise InvalidInputError(duplicates[:MAX_REPORTED_PROBLEMS], len(duplicates))
        for partition in range(partitions):
            enqueue_render(queue, job_id, partition, MERGE, 0)
        merged = _await(store, job_id, "saved", merges, progress, lambda found: total)
        if options.validate_first:
            for base, shards, *_ in merged:
                for number in range(base, base + shards):
                    enqueue(queue, job_id, store.shard_key(job_id, number))
        store.submitted(job_id, {"total": total, "deduplicated": sum(each[2] for each in merged),
                                 "sha256": f"version {stat.version}",
                                 "options": options.record_options(sum(each[3] for each in rendered))})
    except BaseException:
        # Refused, changed, failed or cancelled: everything of it goes. (A cancelled job is not kept, as a
        # local submission's is: the items queued by then are scattered over the file, not its first lines.)
        store.cancel_if_present(job_id)
        store.delete_job(job_id)
        raise
    store.confirm_durable()
    if progress is not None:
        progress(total)
    return job_id


def _plan(path: str, size: int, range_bytes: int) -> list[tuple[int, int]]:
    """The input's ranges: byte ranges of a JSONL file, row groups of a Parquet file (its footer read)."""
    if not is_parquet(path):
        return plan_ranges(size, range_bytes)
    from dscbatch.jobs import parquet  # pyarrow: only for Parquet files

    return parquet.plan_row_groups(path, range_bytes)


def _await(store: JobStore, job_id: str, kind: str, numbers: Sequence[int], progress: Progress | None,
           lines: Callable[[dict[int, tuple[int, ...]]], int]) -> list[tuple[int, ...]]:
    """Poll until each of ``numbers`` (ranges, or merges) has its ``kind`` figures; stop on a refusal, a cancel
    or a delete. ``lines``: the lines counted or rendered so far, from the figures found, for ``status`` and
    ``progress``."""
    while True:
        state = store.range_state(job_id)
        found = state.fields(kind)
        refused = state.refused()
        if refused:
            raise InvalidInputError(refused[:MAX_REPORTED_PROBLEMS], len(refused))
        failed = state.failures()
        for task in sorted(failed, key=lambda task: int(task.rsplit(":", 1)[1])):  # the file's first range first
            failures, worker, error, final = failed[task]
            if final or failures >= MAX_RENDER_ATTEMPTS:
                raise RenderTaskError(f"render task {task} failed {failures} time{'s' if failures > 1 else ''} "
                                      f"(last on {worker}): {error}")
        if store.submission_step(job_id, lines(found)):
            raise SubmissionCancelledError(job_id, lines(found), 0)
        if all(number in found for number in numbers):
            return [found[number] for number in numbers]
        if progress is not None:
            progress(lines(found))
        time.sleep(POLL_SECONDS)


def _options_record(options: SubmitOptions) -> dict[str, Any]:
    record = dataclasses.asdict(options)
    record["defaults"] = options.defaults.model_dump(exclude_none=True)
    return record


def _options(record: dict[str, Any]) -> SubmitOptions:
    return SubmitOptions(**{**record, "defaults": Params(**record["defaults"])})


def run_range_task(store: JobStore, enqueue: Enqueue, tokenizer: Callable[[], ModelTokenizer], worker: str,
                   job_id: str, number: int, first_line: int, first_index: int,
                   should_stop: Callable[[], bool] | None = None) -> None:
    """A render task: count range ``number`` (``first_line`` 0), render it, or merge partition ``number``
    (``first_line`` ``MERGE``); nothing when the job is gone. It is claimed in ``worker``'s name while it runs:
    a live worker's heartbeat queues it again if this one dies, or if it fails. A failure is recorded in the
    job (``note_range_failure``) before it is raised: the submitter fails the job with it at once where it is
    dscbatch's own error (it would fail again), else after ``MAX_RENDER_ATTEMPTS``. ``tokenizer`` loads the
    model's tokenizer (only rendering needs it). ``should_stop`` (its worker shuts down) stops a range's
    rendering between chunks: the task raises ``RenderStopped`` (its claim released; the worker puts it back on
    the queue), not counted as a failure."""
    task = range_task(job_id, number, first_line)
    store.claim_range(worker, job_id, task)
    try:
        plan = store.render_plan(job_id)
        if plan is None or store.is_cancelled(job_id):
            return
        if first_line == MERGE:
            _merge(store, enqueue, plan, job_id, number)
        else:
            _run_range(store, tokenizer, plan, job_id, number, first_line, first_index, should_stop)
    except RenderStopped:
        raise
    except Exception as error:
        store.note_range_failure(job_id, task, worker, f"{type(error).__name__}: {error}", _fails_again(error))
        raise
    finally:
        store.release_range(worker, task)


def _fails_again(error: Exception) -> bool:
    """Whether a render task's error would come back if the task ran again: dscbatch's own errors (a model
    folder without its tokenizer, an input that is not there), but not a storage error that may pass (an object
    store's hiccup, a lost connection)."""
    if isinstance(error, StorageError):
        return isinstance(error, MissingDataError)
    return isinstance(error, DscbatchError)


def _run_range(store: JobStore, tokenizer: Callable[[], ModelTokenizer], plan: dict[str, Any], job_id: str,
               number: int, first_line: int, first_index: int, should_stop: Callable[[], bool] | None) -> None:
    url, (start, end) = plan["input"], plan["ranges"][number]
    options = _options(plan["options"])
    now = stat_input(url)
    if (now.size, now.version) != (plan["size"], plan["version"]):
        store.refuse_range_lines(job_id, number, [
            f"{url}: the input changed since submit planned it (size {plan['size']} -> {now.size}, version "
            f"{plan['version']!r} -> {now.version!r}); the job is cancelled"])
        return
    if first_line == 0:
        if is_parquet(url):
            from dscbatch.jobs import parquet  # pyarrow: only for Parquet files

            rows = parquet.count_rows(url, (start, end))
            store.save_range_count(job_id, number, rows, rows)
        else:
            counted = count_range(url, start, end, options.max_line_bytes)
            store.save_range_count(job_id, number, counted.physical, counted.nonblank)
        return
    rendered = render_range(store, plan["header"], options, tokenizer(), url, start, end, first_line, first_index,
                            plan["partitions"], number, should_stop)
    if rendered.refused:
        store.refuse_range_lines(job_id, number, rendered.refused[:MAX_REPORTED_PROBLEMS])
        return
    # Written again by a second render of the range (the same bytes), before saved:N: the submitter reads them then.
    store.work.write(store.work.ids(job_id, number), rendered.ids)
    store.work.write(store.work.runs(job_id, number), b"".join(rendered.runs))
    store.save_run_sizes(job_id, number, [len(run) for run in rendered.runs])
    if store.commit_range(job_id, number, 0, 0, rendered.invalid) is None:
        return
    if rendered.errors:  # stored once, whichever render of the range gets here first
        store.record(job_id, rendered.errors, store.range_errors_key(job_id),
                     {entry.index: entry.index for entry in rendered.errors})
    store.range_saved(job_id, number)


def _merge(store: JobStore, enqueue: Enqueue, plan: dict[str, Any], job_id: str, partition: int) -> None:
    """Merge a partition's runs from every range into its shards; take their numbers first-wins (a merge run
    again after its worker died gets the same ones and rewrites the same shards), save and queue them."""
    options = _options(plan["options"])
    ranges = len(plan["ranges"])
    sizes = store.run_sizes(job_id)
    runs = [(store.work.runs(job_id, number), sum(sizes[number][:partition]), sizes[number][partition])
            for number in range(ranges)]
    shards, folded = merge_runs(runs, options.group_prefixes, options.dedup, options.shard_max_requests,
                                options.shard_max_tokens)
    committed = store.commit_range(job_id, ranges + partition, len(shards), folded, 0)
    if committed is None:
        return
    base, _ = committed
    keys = [store.shard_key(job_id, base + offset) for offset in range(len(shards))]
    for key, shard in zip(keys, shards, strict=True):
        store.save_shard(key, {**plan["header"], "items": shard})
    if not options.validate_first:
        queue = queue_name(store.prefix, options.model)
        for key in keys:  # again when the partition is merged again: a shard queued twice commits once
            enqueue(queue, job_id, key)
    store.range_saved(job_id, ranges + partition)

"""One byte range of a job's input rendered and sorted into its partitions' runs: the work of a render task
when rendering runs on the cluster (issue 23; the planning half is ``byteranges``, the merge ``rangemerge``).

The range's lines are numbered from its first line number and its items indexed from its first item index, as
the planning wave's counts give them (``byteranges.offsets``), so a job rendered range by range has the items,
indices and token ids the local path gives it. The range's items are sorted by prompt ids (``PrefixSorter``) and
split by prefix key into one run per partition; the merge tasks fold duplicates and cut the shards. Rendering
is deterministic: a range rendered again (its task's worker killed) gives the same runs. The range's ids come
back sorted, for the check across ranges (``rangeids``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dscbatch.jobs.grouping import PrefixSorter
from dscbatch.jobs.rangeids import encode_run
from dscbatch.jobs.rangemerge import encode_runs
from dscbatch.jobs.reader import Line, read_range_lines
from dscbatch.jobs.store import JobStore, ResultEntry
from dscbatch.jobs.submission import Rendering, SubmitOptions
from dscbatch.jobs.tokenizer import ModelTokenizer


@dataclass
class RenderedRange:
    runs: list[bytes]  # each partition's items, sorted (``rangemerge.encode_runs``)
    refused: list[str] = field(default_factory=list)  # strict mode: the bad lines, as FILE:LINE: messages
    errors: list[ResultEntry] = field(default_factory=list)  # --skip-invalid: error records of bad lines (all)
    invalid: int = 0  # --skip-invalid: of its error records, lines that are not requests (a job's invalid_lines)
    ids: bytes = b""  # the range's ids, sorted (``rangeids.encode_run``), for the check across ranges


class RenderStopped(Exception):
    """A render task told to stop (its worker shuts down) before its range was rendered: it runs again elsewhere."""


def render_range(store: JobStore, header: dict[str, Any], options: SubmitOptions, tokenizer: ModelTokenizer,
                 url: str, start: int, end: int, first_line: int, first_index: int, partitions: int,
                 number: int, should_stop: Callable[[], bool] | None = None) -> RenderedRange:
    """The items of the lines starting in ``[start, end)`` of ``url`` (range ``number``), for the job of shard
    ``header``, as ``partitions`` sorted runs (in input order with ``--order input``: then one partition). The
    range's ``verify`` specs are written to its own files as it goes (``JobStore.save_range_verify_specs``).
    Raises ``RenderStopped`` once ``should_stop()`` turns true (checked after every chunk of lines)."""

    def checked(lines_read: int) -> None:
        if should_stop is not None and should_stop():
            raise RenderStopped(f"stopped after {lines_read - first_index} items of range {number}")

    rendering = Rendering(store, url, options, checked, tokenizer, header=header, range_of=(number, first_index))
    read: list[tuple[str, int, bool]] = []  # each line's id, number and whether it is an OpenAI line

    def noted(lines: Iterator[Line]) -> Iterator[Line]:
        for line in lines:
            read.append((line.id, line.number, line.openai))
            yield line

    lines = enumerate(noted(read_range_lines(url, start, end, first_line, max_line_bytes=options.max_line_bytes)),
                      start=first_index)
    with PrefixSorter(dedup=False) as sorter:  # duplicates are folded by the merge, which sees them all
        ordered = sorter.order(rendering.items(lines)) if options.group_prefixes else rendering.items(lines)
        runs = encode_runs(ordered, partitions)
    return RenderedRange(runs, rendering.refused, rendering.errors, rendering.invalid, encode_run(read))

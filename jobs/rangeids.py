"""Duplicate ids across the byte ranges of a job rendered on the cluster (issue 23).

A render task finds duplicates within its range as it reads (``reader.read_range_lines``); across ranges it
writes its lines' ids, sorted, as one run to the job's work folder (``WorkFolder.ids``). Once every range is
rendered the submitter merges the runs as streams (memory: one line of each run) and names each later use of
an id as local rendering does: ``FILE:LINE: id: duplicate id "x" (first used on line M)``.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Iterator

from dscbatch.jobs import objectstore
from dscbatch.jobs.reader import Problem


def encode_run(lines: Iterable[tuple[str, int, bool]]) -> bytes:
    """A range's run from its lines' (id, line number, whether an OpenAI line): each id (as JSON), line number
    and field name, sorted by id, then line."""
    entries = sorted((json.dumps(line_id), number, "custom_id" if openai else "id")
                     for line_id, number, openai in lines)
    return "".join(f"{encoded}\t{number}\t{field}\n" for encoded, number, field in entries).encode()


def _entries(url: str) -> Iterator[tuple[str, int, str]]:
    with objectstore.open_read(url) as stream:
        for raw in stream:
            encoded, number, field = raw.decode().rstrip("\n").split("\t")
            yield encoded, int(number), field


def duplicate_ids(path: str, runs: list[str]) -> Iterator[Problem]:
    """Each line of ``path`` whose id an earlier line in another run (range) used, in id order."""
    previous: tuple[str, int] | None = None
    for encoded, number, field in heapq.merge(*(_entries(url) for url in runs)):
        if previous is not None and previous[0] == encoded:
            yield Problem(path, number, field, f"duplicate id {encoded} (first used on line {previous[1]})")
        else:
            previous = (encoded, number)

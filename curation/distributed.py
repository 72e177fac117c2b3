"""Pass 1 in parts on the executor pool: the input is cut into runs of lines, each part is screened by a task
(``executor/curate_tasks.py``) that stores its :class:`Screening` beside the output, and the parts are merged
here, in one place, where the dedup groups are formed and the output is written (``pipeline.curate``).

A part's screening is stored whole or not at all (``objectstore.write_atomic``) under a name derived from the
input, the plan and the part, and a task whose part is already stored does nothing: a task delivered twice,
or sent again, stores one screening. A part whose screening has not appeared ``resend_after`` seconds after it
was sent is sent again (its executor may have died), so a killed executor delays the run but loses nothing.
A coordinator that is killed and run again reuses the parts already stored; they are deleted once the output
is written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dscbatch.core.errors import DscbatchError
from dscbatch.curation.config import CurateError, Plan
from dscbatch.curation.screening import Filters, Screening
from dscbatch.curation.source import json_records, samples_of
from dscbatch.jobs import objectstore

ERROR_MARK = b"error\n"
POLL_SECONDS = 0.2

Enqueue = Callable[[dict[str, Any]], None]


def line_ranges(url: str, lines_per_part: int) -> list[tuple[int, int, int]]:
    """(first byte, end byte, first line number) of each run of ``lines_per_part`` lines of a JSONL file."""
    ranges = []
    start = offset = 0
    line = 1
    count = 0
    with objectstore.open_read(url) as stream:
        for raw in stream:
            offset += len(raw)
            count += 1
            if count == lines_per_part:
                ranges.append((start, offset, line))
                start, line, count = offset, line + count, 0
    if count:
        ranges.append((start, offset, line))
    return ranges


def _records(url: str, start: int, end: int, first_line: int) -> Iterator[tuple[int, dict[str, Any]]]:
    with objectstore.open_read(url) as stream:
        stream.seek(start)
        data = stream.read(end - start)
    yield from json_records(url, data.split(b"\n"), first_line)


@functools.lru_cache(maxsize=2)
def _filters(plan_json: str) -> Filters:
    """A process builds a plan's filters (the decontamination index among them) once for all its parts."""
    return Filters(Plan.model_validate_json(plan_json))


def screen_part(spec: dict[str, Any]) -> bool:
    """Screen one part and store its screening (or the one line that says why it could not); False when it
    was stored already."""
    if objectstore.exists(spec["result"]):
        return False
    try:
        filters = _filters(spec["plan"])
        screening = Screening(filters.plan, filters)
        for sample in samples_of(_records(spec["input"], spec["start"], spec["end"], spec["line"]), spec["input"]):
            screening.add(sample)
        data = screening.dump()
    except DscbatchError as error:
        data = ERROR_MARK + str(error).encode()
    with objectstore.write_atomic(spec["result"]) as stream:
        stream.write(data)
    return True


@dataclass
class Parts:
    """The parts of one run: their task specs, in input order."""

    plan: Plan
    specs: list[dict[str, Any]]

    @classmethod
    def cut(cls, url: str, plan: Plan, output: str, lines_per_part: int) -> Parts:
        ranges = line_ranges(url, lines_per_part)
        plan_json = plan.model_dump_json()
        key = hashlib.blake2b(json.dumps([url, plan_json, ranges]).encode(), digest_size=8).hexdigest()
        folder, _, name = output.rstrip("/").rpartition("/")
        specs = [{"input": url, "start": start, "end": end, "line": line, "plan": plan_json,
                  "result": f"{folder + '/' if folder else ''}.{name}.curate-{key}-{number:05d}.screening"}
                 for number, (start, end, line) in enumerate(ranges)]
        return cls(plan, specs)

    def screen(self, enqueue: Enqueue, resend_after: float, progress: Callable[[int, int], None] | None = None,
               ) -> Screening:
        """Send every part not stored yet, wait for all, and merge them."""
        sent: dict[int, float] = {}
        pending = set()
        for number, spec in enumerate(self.specs):
            if not objectstore.exists(spec["result"]):
                enqueue(spec)
                sent[number] = time.monotonic()
                pending.add(number)
        while pending:
            for number in sorted(pending):
                if objectstore.exists(self.specs[number]["result"]):
                    pending.discard(number)
                elif time.monotonic() - sent[number] > resend_after:
                    enqueue(self.specs[number])
                    sent[number] = time.monotonic()
            if progress is not None:
                progress(len(self.specs) - len(pending), len(self.specs))
            if pending:
                time.sleep(POLL_SECONDS)
        merged = Screening(self.plan)
        for spec in self.specs:
            with objectstore.open_read(spec["result"]) as stream:
                data = stream.read()
            if data.startswith(ERROR_MARK):
                self.clean()
                raise CurateError(data[len(ERROR_MARK):].decode())
            merged.merge(Screening.load(self.plan, data))
        return merged

    def clean(self) -> None:
        for spec in self.specs:
            objectstore.delete(spec["result"])
            objectstore.delete_staging(spec["result"])  # from an executor killed while it wrote

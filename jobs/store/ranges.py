"""A job rendered on the cluster (issue 23): its plan, each byte range's line counts and shard numbers, and the
bad lines its render tasks found, in ``P:job:ID:ranges`` (``core/keys.py``); deleted with the job. And the
render tasks running now, claimed in ``P:render_claims`` as shards are in ``P:claims``: a task whose worker died
is put back on its queue by a live worker's heartbeat (``workers/liveness.py``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.commands.core import Script

from dscbatch.jobs.store.base import StoreBase

# A render task's ``first_line`` when it merges partition N rather than counting (0) or rendering range N.
MERGE = -1


def range_task(job_id: str, number: int, first_line: int) -> str:
    """The name under which a render task is claimed: ``JOB:count:N`` (``first_line`` 0), ``JOB:merge:N``
    (``MERGE``) or ``JOB:render:N``."""
    kind = "count" if first_line == 0 else "merge" if first_line == MERGE else "render"
    return f"{job_id}:{kind}:{number}"


@dataclass(frozen=True)
class RangeState:
    """One read of a job's ranges hash (``Ranges.range_state``)."""

    found: dict[bytes, bytes]

    def fields(self, kind: str) -> dict[int, tuple[int, ...]]:
        """``count``, ``done``, ``saved`` or ``runs`` of every range that has it: number -> its figures (physical
        and non-blank lines; first shard number, shards, folded duplicates and lines that are not requests; run
        sizes)."""
        result = {}
        for name, value in self.found.items():
            prefix, _, number = name.decode().partition(":")
            if prefix == kind:
                result[int(number)] = tuple(int(figure) for figure in value.split())
        return result

    def refused(self) -> list[str]:
        """Every range's bad lines, in the file's order."""
        refused = sorted((int(name.decode().partition(":")[2]), json.loads(value))
                         for name, value in self.found.items() if name.startswith(b"refused:"))
        return [message for _, messages in refused for message in messages]

    def failures(self) -> dict[str, tuple[int, str, str, bool]]:
        """Each failed render task's failure count, and its last failure's worker, error and finality."""
        found = self.found
        return {name.decode().partition(":")[2]: (int(found.get(b"failures:" + name.partition(b":")[2], b"1")),
                                                   *json.loads(value))
                for name, value in found.items() if name.startswith(b"failed:")}


class Ranges(StoreBase):
    _commit_range: Script

    def _ranges(self, job_id: str) -> str:
        return self.keys.job_part(job_id, "ranges")

    def save_render_plan(self, job_id: str, plan: dict[str, Any]) -> None:
        self.client.hset(self._ranges(job_id), "plan", json.dumps(plan))

    def render_plan(self, job_id: str) -> dict[str, Any] | None:
        """The plan of a job being rendered on the cluster, or None (the job is gone)."""
        plan = cast(bytes | None, self.client.hget(self._ranges(job_id), "plan"))
        return None if plan is None else cast(dict[str, Any], json.loads(plan))

    def save_range_count(self, job_id: str, number: int, physical: int, nonblank: int) -> None:
        self.client.hset(self._ranges(job_id), f"count:{number}", f"{physical} {nonblank}")

    def save_range_bases(self, job_id: str, bases: Sequence[int]) -> None:
        """Each range's first item index, in range order: where an item's ``verify`` spec is found (a range's
        specs are in files of its own, ``JobStore.save_range_verify_specs``). Written once every range is
        counted, before any is rendered."""
        self.client.hset(self._ranges(job_id), "bases", " ".join(str(base) for base in bases))

    def range_bases(self, job_id: str) -> tuple[int, ...] | None:
        """The ranges' first item indices of a job rendered on the cluster; None for a job rendered locally (or
        gone)."""
        bases = cast(bytes | None, self.client.hget(self._ranges(job_id), "bases"))
        return None if bases is None else tuple(int(base) for base in bases.split())

    def range_state(self, job_id: str) -> RangeState:
        """The job's ranges hash, read once (``RangeState`` reads its figures, bad lines and failures)."""
        return RangeState(cast(dict[bytes, bytes], self.client.hgetall(self._ranges(job_id))))

    def save_run_sizes(self, job_id: str, number: int, sizes: list[int]) -> None:
        """The sizes of range ``number``'s runs in its file, one per partition, in order (``jobs.rangemerge``)."""
        self.client.hset(self._ranges(job_id), f"runs:{number}", " ".join(str(size) for size in sizes))

    def run_sizes(self, job_id: str) -> dict[int, tuple[int, ...]]:
        """Each rendered range's run sizes, by range number."""
        return self.range_state(job_id).fields("runs")

    def commit_range(self, job_id: str, number: int, shards: int, folded: int, invalid: int) -> tuple[int, bool] | None:
        """The first shard number of range ``number``'s ``shards`` shards and whether this commit took them
        (False: an earlier render of the range did); None when the job is gone. ``folded`` and ``invalid`` (its
        lines that are not requests, error records with --skip-invalid) are kept with them."""
        base, fresh = cast(list[int], self._commit_range(keys=[self._ranges(job_id), self.keys.job(job_id)],
                                                         args=[number, shards, folded, invalid]))
        return None if base < 0 else (int(base), bool(fresh))

    def range_saved(self, job_id: str, number: int) -> None:
        """Range ``number``'s shards are saved (and queued, unless the job validates first): ``saved:N`` gets
        its ``done:N`` figures."""
        key = self._ranges(job_id)
        done = self.client.hget(key, f"done:{number}")
        if done is not None:
            self.client.hset(key, f"saved:{number}", done)

    def refuse_range_lines(self, job_id: str, number: int, messages: list[str]) -> None:
        """Record the bad lines range ``number``'s render task found (strict mode: the submitter cancels the job)."""
        self.client.hset(self._ranges(job_id), f"refused:{number}", json.dumps(messages))

    def note_range_failure(self, job_id: str, task: str, worker: str, error: str, final: bool) -> int:
        """Record that render task ``task`` failed on ``worker`` with ``error`` (``final``: it would fail again,
        the submitter fails the job at once); returns how many times it failed so far."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hincrby(self._ranges(job_id), f"failures:{task}", 1)
        pipe.hset(self._ranges(job_id), f"failed:{task}", json.dumps([worker, error, final]))
        return int(pipe.execute()[0])

    def claim_range(self, worker: str, job_id: str, task: str) -> None:
        """Note that ``worker`` runs the render task ``task`` (``range_task``), so that it is queued again if the
        worker dies."""
        self.client.hset(self.keys.render_claims, json.dumps([worker, task]), job_id)

    def release_range(self, worker: str, task: str) -> bool:
        """Drop ``worker``'s claim of the render task; True for the one caller that removed it."""
        return bool(self.client.hdel(self.keys.render_claims, json.dumps([worker, task])))

    def orphaned_range_claims(self) -> list[tuple[str, str]]:
        """(worker, render task) of the render claims whose worker's heartbeat has expired."""
        return [(worker, task) for worker, _, task, alive in self._claims_in(self.keys.render_claims) if not alive]

    def live_range_claims(self) -> set[str]:
        """The render tasks live workers claim."""
        return {task for _, _, task, alive in self._claims_in(self.keys.render_claims) if alive}

    def range_errors_key(self, job_id: str) -> str:
        """The bitmap of the item indices whose error record (``--skip-invalid``) a render task has stored: the
        marker ``JobStore.record`` commits them against, so a range rendered twice stores each once."""
        return self.keys.job_part(job_id, "range_errors")

    def open_range_errors(self, job_id: str) -> None:
        """Create the job's ``range_errors_key`` (a record against a marker that does not exist stores nothing)."""
        self.client.setbit(self.range_errors_key(job_id), 0, 0)

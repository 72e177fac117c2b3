"""Lost result parts: a settled job's committed part that the work folder no longer holds whole (deleted,
truncated, overwritten) is replaced by error records for the items it held, which ``retry`` then runs again.

A lost part leaves the job without its results file (``finalize`` records a ``finalize_error`` naming the part;
``results`` fails the same way). An outage is not a loss: reads retry for minutes, and a part that the store
serves again is read as it was. Only a part the store answers for and says is missing or corrupt
(:class:`~dscbatch.core.errors.MissingDataError`) is replaced, and only by ``retry``, a user's decision; never
when every part of the job is missing (a wrong ``DSCBATCH_WORK_URL`` looks like that).

It reads every surviving part three times: to find the lost ones, to find what they held, to count again (a rare
repair; each pass in bounded memory but an array of one integer per item). The items a lost part held are found
from its shard's payload, which the work folder keeps until the results file is written: the shard's items that no
surviving part of that shard answers and that no part committed after the lost one answers. The job's ``done`` and
``failed`` are counted again from the surviving parts' lines (the replaced items among the failures), and the
tokens the lost parts counted are taken back, so the counters stay what the results say. Jobs whose items await
verification are refused for now.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Sequence

from dscbatch.core.errors import DscbatchError, MissingDataError, StorageError
from dscbatch.jobs import parts
from dscbatch.jobs.grouping import DUP_FIELDS, Item, folded_items, item_indices
from dscbatch.jobs.results import ItemInfo, result_line
from dscbatch.jobs.store import JobStore, PartEntry, ResultEntry

LOST_CODE = "result_lost"


def lost_parts(store: JobStore, job_id: str, entries: Sequence[PartEntry]) -> list[PartEntry]:
    """The parts the work folder says are missing or holds corrupt (an outage raises, after the work folder's
    retries)."""
    lost = []
    for entry in entries:
        url = store.work.part(job_id, entry.name)
        try:
            parts.decode(url, store.work.read(url))
        except MissingDataError:
            lost.append(entry)
    return lost


def replace_lost_parts(store: JobStore, job_id: str) -> int:
    """Replace the settled job's lost parts with retryable error records for their items (see the module);
    returns how many items they held. 0 when the job is not settled, or nothing is lost."""
    status = store.status(job_id)
    settlement = store.settlement(job_id)
    if settlement is None or status.cancelled:
        return 0
    entries = store.part_entries(job_id)
    lost = lost_parts(store, job_id, entries)
    if not lost:
        return 0
    if len(lost) == len(entries):
        raise StorageError(f"every result part of job {job_id} is missing from {store.work.job(job_id)}: is "
                           "DSCBATCH_WORK_URL the folder the workers write to?")
    if any(entry.shard is None for entry in lost):
        names = ", ".join(entry.name for entry in lost if entry.shard is None)
        raise DscbatchError(f"job {job_id}: lost part {names} held the error records of input lines that cannot "
                            "run; submit the file again")
    if status.to_verify:
        raise DscbatchError(f"job {job_id}: lost parts ({', '.join(entry.name for entry in lost)}) of a job whose "
                            "results are verified cannot be replaced yet; submit the file again")
    held = _held_items(store, job_id, entries, lost, status.total)
    indices = {index for item in held for index in item_indices(item)}
    done = failed = 0
    for _, line in store.results(job_id, status.total, leave_out=indices, without=lost):
        if line is not None:
            if json.loads(line).get("error") is None:
                done += 1
            else:
                failed += 1
    header = store.shard_header(job_id)
    records = [_record(job_id, header, item, lost) for item in held]
    if not store.replace_lost_parts(job_id, settlement, lost, done, failed + len(indices),
                                    [entry for group in records for entry in group]):
        raise DscbatchError(f"job {job_id} changed while its lost parts were being replaced: run retry again")
    return len(indices)


def _held_items(store: JobStore, job_id: str, entries: Sequence[PartEntry], lost: Sequence[PartEntry],
                total: int) -> list[Item]:
    """The shard items (restricted to the indices in question) whose results were in the lost parts."""
    lost_names = {entry.name for entry in lost}
    shards = {entry.shard for entry in lost}
    last = array("q", [-1]) * total  # the position in the parts list of the last surviving part with each index
    answered: dict[int | None, set[int]] = {shard: set() for shard in shards}  # by surviving parts of the shard
    for position, entry in enumerate(entries):
        if entry.name in lost_names:
            continue
        url = store.work.part(job_id, entry.name)
        for index, _ in parts.decode(url, store.work.read(url)):
            last[index] = position
            if entry.shard in answered:
                answered[entry.shard].add(index)
    held: list[Item] = []
    for shard in sorted(number for number in shards if number is not None):
        lost_at = max(position for position, entry in enumerate(entries)
                      if entry.shard == shard and entry.name in lost_names)
        try:
            payload = store.finished_shard(job_id, shard)
        except MissingDataError as error:
            raise MissingDataError(f"job {job_id}: the payload of shard {shard} is gone too ({error}): the lost "
                                   "results cannot be run again; submit the file again") from None
        for item in payload["items"]:
            keep = [each for each in folded_items(item)
                    if each["i"] not in answered[shard] and last[each["i"]] < lost_at]
            if keep:
                first = {name: value for name, value in keep[0].items() if name != "dups"}
                dups = [{name: each[name] for name in DUP_FIELDS if name in each} for each in keep[1:]]
                held.append({**first, "dups": dups} if dups else first)
    return held


def _record(job_id: str, header: dict[str, object], item: Item, lost: Sequence[PartEntry]) -> list[ResultEntry]:
    names = ", ".join(entry.name for entry in lost)
    message = (f"its result was in part {names}, which the work folder no longer holds whole; `dscbatch retry "
               f"{job_id}` runs it again")
    retry_item = json.dumps(item, separators=(",", ":"))
    return [ResultEntry(each["i"], result_line(ItemInfo.from_shard_item(each), model=str(header["model"]),
                                               job_id=job_id, created=int(str(header["created"])),
                                               error_code=LOST_CODE, error_message=message),
                        "retryable", retry_item=retry_item if position == 0 else "")
            for position, each in enumerate(folded_items(item))]

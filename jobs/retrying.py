"""``retry``: run the items that failed in a worker again, in new shards of the same job."""

from __future__ import annotations

from dscbatch.jobs.grouping import item_indices
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import Enqueue


def retry_failed(store: JobStore, job_id: str, enqueue: Enqueue) -> int:
    """Forget the job's retryable failures and enqueue their items again; returns how many."""
    job = store.status(job_id)
    failed = store.take_failed(job_id)
    remaining = set(failed)
    shard_keys: list[str] = []
    for number in range(job.shards):
        payload = store.load_shard(store.shard_key(job_id, number))
        if payload is None:
            continue
        # Earlier retries copied items into later shards: take each failed item once.
        items = [item for item in payload["items"] if not remaining.isdisjoint(item_indices(item))]
        remaining.difference_update(index for item in items for index in item_indices(item))
        if items:
            first = store.add_shards(job_id, 1)
            shard_keys.append(store.save_shard(job_id, first, {**payload, "items": items}))
    for key in shard_keys:
        enqueue(job.queue, job_id, key)
    return len(failed)

"""``retry``: run the items that failed in a worker again, in new shards of the same job.

A worker stores each retryable failure's shard item beside its error record (``P:job:ID:retry``), so retry
works after the job's shards have left Redis and after its results file was written: the retried items'
new results then take the place of their error lines, and the job is finalized again once they settle. The items
of a result part that the work folder lost are run again the same way (``jobs.repairing``).
"""

from __future__ import annotations

from dscbatch.jobs.grouping import cut_shards
from dscbatch.jobs.repairing import replace_lost_parts
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import Enqueue


def retry_failed(store: JobStore, job_id: str, enqueue: Enqueue, max_requests: int = 256,
                 max_tokens: int = 1 << 20) -> tuple[int, int]:
    """Forget the job's retryable failures (first making the items of lost result parts such failures,
    ``jobs.repairing``) and enqueue their items again; returns how many, and how many of them were lost."""
    lost = replace_lost_parts(store, job_id)
    job = store.status(job_id)
    header = store.shard_header(job_id)
    failed, items = store.take_failed(job_id)
    items.sort(key=lambda item: item["ids"])  # prefix order, as at submission
    shards = list(cut_shards(items, max_requests, max_tokens))
    first = store.add_shards(job_id, len(shards)) if shards else 0
    keys = store.save_shards(job_id, ({**header, "items": shard_items} for shard_items in shards), first)
    for key in keys:
        enqueue(job.queue, job_id, key)
    return len(failed), lost

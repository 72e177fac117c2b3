"""Work Redis lost in a crash runs again: a shard is dropped only when every item has its result, and a shard
that nothing will run (its message lost) is queued again by the workers' housekeeping."""

from __future__ import annotations

import json
import time
from pathlib import Path

from dscbatch.core.celery_app import make_app, shard_enqueuer
from dscbatch.core.settings import Settings
from dscbatch.jobs.grouping import item_indices
from dscbatch.jobs.store import JobStore, ResultEntry
from dscbatch.jobs.submission import SubmitOptions, queue_name, submit_job
from dscbatch.workers import reaper
from dscbatch.workers.repair import Repairer

GRACE = 0.3


def _job(store: JobStore, settings: Settings, model: Path, tmp_path: Path, queued: set[int]) -> str:
    """A 10-line job in shards of 4 whose shards numbered in ``queued`` are put on the queue (the rest lost)."""
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"def f{i}():"}) + "\n" for i in range(10)))
    with shard_enqueuer(make_app(settings)) as enqueue:
        def some(queue: str, job_id: str, shard_key: str) -> None:
            if int(shard_key.rsplit(":", 1)[1]) in queued:
                enqueue(queue, job_id, shard_key)

        return submit_job(store, some, path, SubmitOptions(model=str(model), shard_max_requests=4, dedup=False))


def _queued(store: JobStore, queue: str) -> list[str]:
    return sorted(str(reaper.message_shard(json.loads(raw))) for raw in store.client.lrange(queue, 0, -1))


def test_a_shard_whose_message_was_lost_is_queued_again_after_the_grace(settings: Settings, deepseek_dir: Path,
                                                                       tmp_path: Path) -> None:
    own = settings.model_copy(update={"key_prefix": f"repair-{tmp_path.name}"})  # no worker serves this prefix
    store = JobStore.connect(own)
    job_id = _job(store, own, deepseek_dir, tmp_path, queued={0})
    queue = queue_name(own.key_prefix, str(deepseek_dir))
    shards = [store.shard_key(job_id, number) for number in range(3)]
    assert _queued(store, queue) == shards[:1]
    store.claim("a-worker", job_id, shards[1])  # claimed: a worker runs it
    requeued: list[str] = []

    def requeue(job: str, shard_key: str) -> None:
        assert job == job_id
        requeued.append(shard_key)
        with shard_enqueuer(make_app(own)) as enqueue:
            enqueue(queue, job, shard_key)

    repairer = Repairer(store, "a-worker", queue, requeue, grace=GRACE)
    time.sleep(GRACE)  # the job must be older than the grace: a submission may still be queueing its shards
    assert repairer.repair() == []  # the first look only suspects shard 2
    assert repairer.repair() == []  # the lock: one look per REPAIR_SECONDS
    store.client.delete(store.keys.repair_lock(queue))
    time.sleep(GRACE)
    assert repairer.repair() == [shards[2]] == requeued
    assert _queued(store, queue) == [shards[0], shards[2]]
    store.client.delete(store.keys.repair_lock(queue))
    assert repairer.repair() == []  # queued now: nothing is stranded
    assert store.client.hlen(store.keys.repair_suspects(queue)) == 0


def test_a_shard_whose_results_redis_lost_is_not_dropped(store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"def g{i}():"}) + "\n" for i in range(3)))
    job_id = submit_job(store, lambda queue, job, key: None, path,
                        SubmitOptions(model=str(deepseek_dir), shard_max_requests=4, dedup=False))
    shard = store.shard_key(job_id, 0)
    payload = store.load_shard(shard)
    assert payload is not None
    indices = [index for item in payload["items"] for index in item_indices(item)]
    assert indices == [0, 1, 2]
    positions = {index: index for index in indices}
    store.record(job_id, [ResultEntry(index, json.dumps({"id": str(index + 1)}), "done") for index in (0, 2)], shard,
                 positions)
    assert store.drop_shard(job_id, shard, indices) == [1]  # item 1's result is not in Redis
    assert store.load_shard(shard) == payload
    store.record(job_id, [ResultEntry(1, json.dumps({"id": "2"}), "done")], shard, positions)
    assert store.drop_shard(job_id, shard, indices) == []
    assert store.load_shard(shard) is None
    assert store.drop_shard(job_id, shard, indices) == []  # a copy that finishes later finds it gone: nothing missing
    assert store.status(job_id).state == "completed"

"""The finalization claim and commit of a job's results file (``jobs.finalize``): ``P:finalize`` holds the settled
jobs awaiting their file, ``P:finalizing`` the worker writing each (``core/keys.py``)."""

from __future__ import annotations

import functools
import time
from typing import cast

from dscbatch.jobs.store import scripts
from dscbatch.jobs.store.base import StoreBase


class Finalizing(StoreBase):
    def awaiting_finalize(self) -> list[str]:
        """Settled jobs whose results file is not written yet."""
        return sorted(job_id.decode() for job_id in cast(set[bytes], self.client.smembers(self.keys.finalize)))

    def claim_finalize(self, job_id: str, worker: str) -> bool:
        """Claim the writing of the job's results file for ``worker``: True if the job awaits one and no other
        worker holds the claim (``HSETNX``)."""
        if not self.client.sismember(self.keys.finalize, job_id):
            return False
        return bool(self.client.hsetnx(self.keys.finalizing, job_id, worker))

    def release_finalize(self, job_id: str, worker: str) -> bool:
        """Drop ``worker``'s finalization claim of the job; True for the one caller that removed it."""
        return bool(self.client.eval(scripts.source("finalize_release"), 1, self.keys.finalizing, job_id, worker))

    def finalize_claims(self) -> dict[str, str]:
        """Job id -> the worker writing its results file."""
        return {job.decode(): worker.decode() for job, worker in
                cast(dict[bytes, bytes], self.client.hgetall(self.keys.finalizing)).items()}

    def worker_alive(self, worker: str) -> bool:
        """Whether the worker's heartbeat has not expired."""
        return bool(self.client.exists(self.keys.worker(worker)))

    def commit_finalize(self, job_id: str, worker: str, settlement: int, url: str, shards: int) -> bool:
        """``finalize_commit.lua``: record the results file ``url`` on the job and delete what it holds now, if
        ``worker`` still holds its claim and the job's settlement is still ``settlement``; True if committed."""
        part = functools.partial(self.keys.job_part, job_id)
        keys = [self.keys.finalizing, self.keys.job(job_id), self.keys.finalize, part("parts"), part("voided"),
                part("attempts"), part("item_attempts"), part("verdicts"), part("verdicted"), part("verdict_parts"),
                *(self.keys.shard(job_id, number) for number in range(shards))]
        return bool(self.client.eval(
            scripts.source("finalize_commit"), len(keys), *keys, job_id, worker, settlement, url, time.time()))

    def record_finalize_error(self, job_id: str, error: str) -> None:
        """Show why the job's results file could not be written (if the job still exists)."""
        if self.client.exists(self.keys.job(job_id)):
            self.client.hset(self.keys.job(job_id), "finalize_error", error)
            self.announce(job_id, "finalize_error")

"""The shard task: run a stored shard through the engine and store each item's result exactly once."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from celery import Celery
from dscbatch.jobs.errors import EngineError
from dscbatch.jobs.requests import Params
from dscbatch.jobs.results import ItemInfo, Output, Usage, result_line
from dscbatch.jobs.store import JobStore, ResultEntry
from dscbatch.workers.app import RUN_SHARD
from dscbatch.workers.engine import Engine, EngineRequest, EngineResult

log = logging.getLogger(__name__)

# Exit status of a worker whose engine died: the supervisor (k8s, `dscbatch run`) starts a fresh one.
ENGINE_DIED_EXIT = 70


@dataclass(frozen=True)
class ShardReport:
    items: int
    skipped: int  # already had a result: a redelivered shard
    stored: int


def _entry(payload: dict[str, Any], item: dict[str, Any], result: EngineResult) -> ResultEntry:
    info = ItemInfo.from_shard_item(item)
    common = {"model": payload["model"], "job_id": payload["job"], "created": payload["created"]}
    if result.error is not None:
        line = result_line(info, error_code=result.error.code, error_message=result.error.message, **common)
        return ResultEntry(info.index, line, "retryable")
    outputs = [Output(c.text, c.finish_reason, len(c.token_ids)) for c in result.outputs]
    usage = Usage(result.prompt_tokens, sum(o.completion_tokens for o in outputs), result.cached_prompt_tokens)
    line = result_line(info, outputs=outputs, usage=usage, **common)
    return ResultEntry(info.index, line, "done", usage.prompt_tokens, usage.completion_tokens,
                       usage.cached_prompt_tokens)


class ShardRunner:
    def __init__(self, store: JobStore, engine: Engine) -> None:
        self.store = store
        self.engine = engine

    def run(self, job_id: str, shard_key: str) -> ShardReport:
        payload = self.store.load_shard(shard_key)
        if payload is None or self.store.is_cancelled(job_id):
            log.info("skipping %s: job deleted or cancelled", shard_key)
            return ShardReport(0, 0, 0)
        items = payload["items"]
        settled = self.store.settled(job_id, [item["i"] for item in items])
        todo = [item for item in items if item["i"] not in settled]
        requests = [EngineRequest(str(item["i"]), item["ids"], Params.model_validate(item["params"]), payload["stop"])
                    for item in todo]
        results = self.engine.generate(requests) if requests else []
        stored = self.store.record(job_id, [_entry(payload, item, result) for item, result in zip(todo, results,
                                                                                                strict=True)])
        log.info("%s: %d items, %d already done, %d stored", shard_key, len(items), len(settled), stored)
        return ShardReport(len(items), len(settled), stored)


def register_tasks(app: Celery, runner: ShardRunner) -> None:
    @app.task(name=RUN_SHARD, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def run_shard(job_id: str, shard_key: str) -> None:
        try:
            runner.run(job_id, shard_key)
        except EngineError:
            # Without an engine this worker can serve nothing: leave the shard unacknowledged for another.
            log.critical("engine failed while running %s; exiting so the shard is redelivered", shard_key,
                         exc_info=True)
            os._exit(ENGINE_DIED_EXIT)

"""The verification task: run a stored result's outputs against the item's tests, store the verdicts once.

A GPU worker queues ``dscbatch.verify(job_id, index)`` on the executor queue right after it stores a result
that needs verification (workers/tasks.py); the store already holds the item in its waiting set, written in
the same step as the result, so a worker that dies in between loses nothing (executor/worker.py sweeps it).
Verdicts are stored first-wins, so a task delivered twice runs its programs twice but stores one record.
The item's ``verify`` spec and its result are read from the job's work folder (the executor only reads it);
its record goes to Redis, from where a worker moves it to the work folder (``JobStore.flush_due_verdicts``).
Items in a language other than Python go on from that queue to their language's (:func:`executor_queue`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from typing import Any

from celery import Celery

from dscbatch.core.celery_app import VERIFY, enqueue_verifications
from dscbatch.core.errors import SandboxError
from dscbatch.executor.extraction import program
from dscbatch.executor.languages import LANGUAGES
from dscbatch.executor.observer import ExecutorObserver
from dscbatch.executor.toolchain import Toolchains
from dscbatch.jobs.requests import Verify
from dscbatch.jobs.results import output_texts
from dscbatch.jobs.store import JobStore

log = logging.getLogger(__name__)


class Verifier:
    """Judges on this executor the items in the languages it runs (``languages``); an item in another
    language, taken from the shared queue, is routed to that language's queue."""

    def __init__(self, store: JobStore, toolchains: Toolchains, observer: ExecutorObserver,
                 languages: Collection[str] = ("python",), app: Celery | None = None) -> None:
        self.store = store
        self.toolchains = toolchains
        self.observer = observer
        self.languages = frozenset(languages)
        self.app = app

    def verify(self, job_id: str, index: int) -> bool:
        """Judge the item's outputs; True when this call stored its verification record."""
        if self.store.has_verdict(job_id, index):
            return False
        spec, line = self.store.verification_input(job_id, index)
        if spec is None or line is None or self.store.is_cancelled(job_id):
            log.info("%s/%d: job deleted or cancelled; not verified", job_id, index)
            self.store.forget_waiting(job_id, index)
            return False
        verify = Verify.model_validate_json(spec)
        if verify.language not in self.languages:
            if self.app is None:
                raise SandboxError(f"{job_id}/{index}: {verify.language} does not run on this executor")
            log.info("%s/%d: %s does not run here; routed to its queue", job_id, index, verify.language)
            enqueue_verifications(self.app, self.store.prefix, job_id, [index], verify.language)
            return False
        language = LANGUAGES[verify.language]
        verdicts: list[dict[str, Any]] = []
        for text in output_texts(json.loads(line)):
            code = program(verify, text)
            verdict = self.toolchains.run(language, code)
            self.observer.executed(verdict, language.code)
            if verdict.status == "sandbox_error":
                # The host's fault, not the sample's: leave the task unacknowledged for another executor.
                raise SandboxError(f"{job_id}/{index}: the sandbox failed: {verdict.error}")
            verdicts.append({**verdict.as_dict(), "program": code})
        passed = sum(verdict["status"] == "passed" for verdict in verdicts)
        record = json.dumps({"passed": passed, "samples": len(verdicts), "verdicts": verdicts}, ensure_ascii=False)
        return self.store.record_verdict(job_id, index, record, len(verdicts), passed)


def register_tasks(app: Celery, verifier: Verifier) -> None:
    @app.task(name=VERIFY, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
    def verify(job_id: str, index: int) -> None:
        verifier.verify(job_id, index)

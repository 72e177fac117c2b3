"""The verification task: run a stored result's outputs against the item's tests, store the verdicts once.

A GPU worker queues ``dscbatch.verify(job_id, index)`` on the executor queue right after it stores a result
that needs verification (workers/tasks.py); the store already holds the item in its waiting set, written in
the same step as the result, so a worker that dies in between loses nothing (executor/worker.py sweeps it).
Verdicts are stored first-wins, so a task delivered twice runs its programs twice but stores one record.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from celery import Celery

from dscbatch.core.celery_app import VERIFY
from dscbatch.core.errors import SandboxError
from dscbatch.executor.extraction import program
from dscbatch.executor.observer import ExecutorObserver
from dscbatch.executor.sandbox import Sandbox
from dscbatch.jobs.requests import Verify
from dscbatch.jobs.results import output_texts
from dscbatch.jobs.store import JobStore

log = logging.getLogger(__name__)

class Verifier:
    def __init__(self, store: JobStore, sandbox: Sandbox, observer: ExecutorObserver) -> None:
        self.store = store
        self.sandbox = sandbox
        self.observer = observer

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
        verdicts: list[dict[str, Any]] = []
        for text in output_texts(json.loads(line)):
            code = program(verify, text)
            verdict = self.sandbox.run(code)
            self.observer.executed(verdict)
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

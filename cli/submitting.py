"""What ``submit``, ``run`` and ``eval`` share: ``-p``/``--engine-arg`` values and submitting a file."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from dscbatch.cli.progress import ReadingProgress
from dscbatch.cli.worker_notice import NoWorkerNotice
from dscbatch.core.errors import SettingsError
from dscbatch.core.settings import Settings
from dscbatch.jobs.requests import Params
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import SubmitOptions, queue_name, submit_job


def key_values(pairs: Sequence[str], what: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are JSON where they parse as JSON, strings otherwise."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SettingsError(f"{what} {pair!r}: expected KEY=VALUE")
        try:
            values[key] = json.loads(raw)
        except ValueError:
            values[key] = raw
    return values


def parse_params(pairs: Sequence[str]) -> Params:
    from pydantic import ValidationError

    try:
        return Params.model_validate(key_values(pairs, "--param"))
    except ValidationError as error:
        first = error.errors()[0]
        reason = "unknown parameter" if first["type"] == "extra_forbidden" else first["msg"]
        raise SettingsError(f"--param {'.'.join(map(str, first['loc']))}: {reason}") from None


def submit_file(settings: Settings, store: JobStore, input_path: str, options: SubmitOptions) -> str:
    from dscbatch.core.celery_app import make_app, shard_enqueuer

    reading = ReadingProgress(sys.stderr)
    with shard_enqueuer(make_app(settings)) as enqueue:
        job_id = submit_job(store, enqueue, input_path, options, reading, waiting=enqueue.waiting)
        reading.done()
    return job_id


def submit_file_on_cluster(settings: Settings, store: JobStore, input_path: str, options: SubmitOptions,
                           range_bytes: int) -> str:
    """``submit --render cluster``: the workers render the input's byte ranges (``jobs.clusterrender``)."""
    from dscbatch.core.celery_app import enqueue_render, make_app, shard_enqueuer
    from dscbatch.jobs.clusterrender import submit_on_cluster

    app = make_app(settings)
    reading = ReadingProgress(sys.stderr)
    notice = NoWorkerNotice(store, queue_name(store.prefix, options.model), options.model, render=True)

    def progress(lines: int) -> None:
        reading(lines)
        notice()

    with shard_enqueuer(app) as enqueue:
        job_id = submit_on_cluster(store, enqueue, lambda *args: enqueue_render(app, *args), input_path, options,
                                   progress, range_bytes)
        reading.done()
    return job_id

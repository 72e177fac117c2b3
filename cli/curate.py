"""``dscbatch curate``: a finished job's results (or a results file) as curated fine-tuning data."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal

import click

from dscbatch.core.settings import Settings
from dscbatch.curation.config import CurateError, Plan
from dscbatch.curation.distributed import Parts
from dscbatch.curation.export import Format
from dscbatch.curation.pipeline import curate as run_curate
from dscbatch.curation.screening import Filters
from dscbatch.curation.source import Source, file_source, job_source
from dscbatch.jobs import objectstore
from dscbatch.jobs.fileformat import is_parquet

DEFAULT_PART_LINES = 10000


def _source(settings: Settings, input_ref: str) -> Source:
    if objectstore.exists(input_ref):
        return file_source(input_ref)
    if "/" not in input_ref and "." not in input_ref:  # a job id (a file's name has a suffix)
        from dscbatch.jobs.store import JobStore

        return job_source(JobStore.connect(settings), input_ref)
    raise CurateError(f"{input_ref}: no such results file (nor a job id)")


def _parts(settings: Settings, source: Source, plan: Plan, output: str, part_lines: int) -> Parts:
    if source.job is not None or is_parquet(source.name):
        raise CurateError("--executors reads a JSONL results file (write a job's with `dscbatch results`)")
    Filters(plan)  # an unknown language or benchmark is refused here, before any part is sent
    from dscbatch.jobs.store import JobStore

    if not JobStore.connect(settings).executors():
        click.echo("no executor is running: the parts wait for `dscbatch executor`", err=True)
    url = os.path.abspath(source.name) if objectstore.is_local(source.name) else source.name
    return Parts.cut(url, plan, output, part_lines)


def _part_enqueuer(settings: Settings) -> Callable[[dict[str, Any]], None]:
    from dscbatch.core.celery_app import make_app
    from dscbatch.executor.curate_tasks import enqueue_part

    app = make_app(settings)
    return lambda spec: enqueue_part(app, settings.key_prefix, spec)


def _progress(stage: str, count: int) -> None:
    click.echo(f"\rcurate: {count} samples {stage}", err=True, nl=False)


@click.command()
@click.argument("input_ref", metavar="INPUT")
@click.option("-o", "--output", required=True, metavar="URL",
              help="Where to write the curated samples (path or fsspec URL; Parquet for a .parquet name, else "
                   "JSONL).")
@click.option("-s", "--step", "steps", multiple=True, metavar="NAME[:KEY=VALUE,...]",
              help="A step to apply (repeatable): execution, syntax, quality, decontaminate, exact, near; see "
                   "docs/curation.md for each one's parameters and defaults.")
@click.option("--keep", type=click.Choice(["verified", "first"]), default="verified", show_default=True,
              help="Which sample a duplicate group keeps: its first that passed verification (else its first), "
                   "or its first.")
@click.option("--format", "form", type=click.Choice(["deepseek", "messages"]), default="deepseek",
              show_default=True, help="Records as DeepSeek Coder's {instruction, output} or chat messages.")
@click.option("--report", "report_url", default=None, metavar="URL", help="Write the run's JSON report here.")
@click.option("--executors", is_flag=True, help="Screen INPUT (a JSONL results file the executors can read) in "
                                                "parts on the executor pool; dedup and writing stay here.")
@click.option("--part-lines", type=click.IntRange(min=1), default=DEFAULT_PART_LINES, show_default=True,
              help="With --executors: result lines per part.")
@click.pass_context
def curate(ctx: click.Context, input_ref: str, output: str, steps: Sequence[str],
           keep: Literal["verified", "first"], form: Format, report_url: str | None, executors: bool,
           part_lines: int) -> None:
    """Filter, decontaminate and deduplicate INPUT (a finished job's id or a results file) into fine-tuning
    data at URL, written whole or not at all; prints counts per step."""
    plan = Plan.parse(list(steps), keep)
    source = _source(ctx.obj, input_ref)
    progress = _progress if sys.stderr.isatty() else None
    if executors:
        parts = _parts(ctx.obj, source, plan, output, part_lines)
        screening = parts.screen(_part_enqueuer(ctx.obj), ctx.obj.visibility_timeout,
                                 (lambda done, total: _progress(f"parts of {total} screened", done)) if progress
                                 else None)
        outcome = run_curate(source, plan, output, form, progress, screening)
        parts.clean()
    else:
        outcome = run_curate(source, plan, output, form, progress)
    if sys.stderr.isatty():
        click.echo("", err=True)
    click.echo(outcome.table(), err=True)
    click.echo(f"wrote {outcome.samples_out} of {outcome.samples_in} samples to {output}", err=True)
    if report_url is not None:
        with objectstore.write_atomic(report_url) as stream:
            stream.write((json.dumps(outcome.as_dict(), indent=2, ensure_ascii=False) + "\n").encode())
        click.echo(f"wrote the report to {report_url}", err=True)

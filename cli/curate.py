"""``dscbatch curate``: a finished job's results (or a results file) as curated fine-tuning data."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from typing import Literal

import click

from dscbatch.curation.config import CurateError, Plan
from dscbatch.curation.export import Format
from dscbatch.curation.pipeline import curate as run_curate
from dscbatch.curation.source import Source, file_source, job_source
from dscbatch.jobs import objectstore
from dscbatch.jobs.settings import Settings

JOB_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")


def _source(settings: Settings, input_ref: str) -> Source:
    if objectstore.exists(input_ref):
        return file_source(input_ref)
    if JOB_ID.match(input_ref):
        from dscbatch.jobs.store import JobStore

        return job_source(JobStore.connect(settings), input_ref)
    raise CurateError(f"{input_ref}: no such results file (nor a job id)")


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
@click.pass_context
def curate(ctx: click.Context, input_ref: str, output: str, steps: Sequence[str],
           keep: Literal["verified", "first"], form: Format, report_url: str | None) -> None:
    """Filter, decontaminate and deduplicate INPUT (a finished job's id or a results file) into fine-tuning
    data at URL, written whole or not at all; prints counts per step."""
    plan = Plan.parse(list(steps), keep)
    source = _source(ctx.obj, input_ref)
    outcome = run_curate(source, plan, output, form, _progress if sys.stderr.isatty() else None)
    if sys.stderr.isatty():
        click.echo("", err=True)
    click.echo(outcome.table(), err=True)
    click.echo(f"wrote {outcome.samples_out} of {outcome.samples_in} samples to {output}", err=True)
    if report_url is not None:
        with objectstore.write_atomic(report_url) as stream:
            stream.write((json.dumps(outcome.as_dict(), indent=2, ensure_ascii=False) + "\n").encode())
        click.echo(f"wrote the report to {report_url}", err=True)

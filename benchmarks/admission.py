"""Admission experiments (issue 15): can dscbatch beat handing vLLM the whole prefix-sorted job by choosing
when each request enters the engine? One engine, the same requests, policies side by side, several rounds.

Usage: ``python benchmarks/admission.py [--workloads many-contexts long-contexts] [--kv-cache-bytes 12582912]
[--rounds 3] [--json out.json]`` (2-4 minutes on 2 cores with the tiny model).

Two questions, each answered by measurement on the engine dscbatch runs (its Engine class, the throughput
benchmark's engine arguments):

- ``siblings``: does a request that shares a prefix with another one added in the same step get its cached
  blocks, also when chunked prefill spreads that prefix over several steps (``--chunk-budget`` below the
  prefix)? If it does, holding siblings back until their leader's prefill is done (SGLang's delay
  scheduling) cannot raise the hit rate. Reported: each of four siblings' cached prompt tokens, added at once.
- ``policies``: the throughput workloads' requests in prefix order, fed by
  ``all`` (every request at once: what plain ``LLM.generate`` on sorted requests, and dscbatch's engine loop,
  do) and ``kv:F`` (a KV ledger: a request enters only while the blocks of the requests in the engine, prompt
  plus ``max_tokens`` each, the leading blocks a request shares with the one before it counted once, stay
  within F times the cache's blocks: no preemption, at the price of KV left unused). Reported per round and
  policy: seconds, hit rate, vLLM's preemptions, engine steps, and requests whose greedy output ids differ
  from the first policy's.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from reader import print_report
from throughput_common import DEFAULT_MAX_MODEL_LEN, DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS, engine_args
from throughput_raw import preemptions
from workloads import DEFAULT_MODEL, ideal_cached_tokens, make_workload, shared_length

from dscbatch.jobs.requests import Params
from dscbatch.jobs.tokenizer import ModelTokenizer
from dscbatch.workers.engine import Engine, EngineRequest, EngineResult

MiB = 1 << 20


def siblings(model: str, kv_cache_bytes: int, budget: int, prefix_tokens: int) -> dict[str, Any]:
    """Four requests with one ``prefix_tokens`` prefix (random ids) and their own 20 tokens, added at once."""
    args = engine_args(model, kv_cache_bytes, DEFAULT_MAX_NUM_SEQS, budget, DEFAULT_MAX_MODEL_LEN)
    del args["model"]
    engine = Engine(model, args)
    try:
        rng = random.Random(1)
        prefix = [rng.randrange(100, 30000) for _ in range(prefix_tokens)]
        params = Params.model_validate({"max_tokens": 4, "temperature": 0, "ignore_eos": True})
        requests = [EngineRequest(f"s{n}", prefix + [rng.randrange(100, 30000) for _ in range(20)], params, [])
                    for n in range(4)]
        block = int(engine.llm.llm_engine.vllm_config.cache_config.block_size)
        return {"max_num_batched_tokens": budget, "prefix_tokens": prefix_tokens, "block_size": block,
                "cached_prompt_tokens": [result.cached_prompt_tokens for result in engine.generate(requests)],
                "ideal": [0] + [prefix_tokens // block * block] * 3}
    finally:
        engine.close()


def run_policy(engine: Engine, policy: str, requests: list[EngineRequest], blocks: int,
               block_size: int) -> tuple[dict[str, Any], dict[str, list[int]]]:
    engine.llm.reset_prefix_cache()
    preempted = preemptions(engine.llm)
    started = time.perf_counter()
    pending = list(reversed(requests))  # pop() takes the next in prefix order
    running: dict[str, EngineRequest] = {}
    results: dict[str, EngineResult] = {}
    kind, _, value = policy.partition(":")
    used, last = 0, None  # kv:F's ledger: blocks of the requests in the engine, the last one admitted
    cost: dict[str, int] = {}
    steps = 0
    while pending or running:
        while pending:
            request = pending[-1]
            need = math.ceil((len(request.prompt_token_ids) + (request.params.max_tokens or 0)) / block_size)
            if last is not None:
                need -= shared_length(last.prompt_token_ids, request.prompt_token_ids) // block_size
            if kind == "kv" and running and used + need > float(value) * blocks:
                break
            pending.pop()
            engine_id, refused = engine.add(request)
            assert refused is None, refused
            running[engine_id], cost[engine_id] = request, need
            used, last = used + need, request
        for engine_id, result in engine.step():
            results[result.key] = result
            del running[engine_id]
            used -= cost.pop(engine_id)
        steps += 1
    seconds = time.perf_counter() - started
    prompt = sum(result.prompt_tokens for result in results.values())
    cached = sum(result.cached_prompt_tokens for result in results.values())
    return ({"seconds": round(seconds, 3), "hit_rate": round(cached / prompt, 4),
             "preemptions": preemptions(engine.llm) - preempted, "steps": steps},
            {key: result.outputs[0].token_ids for key, result in results.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--workloads", nargs="+", default=["many-contexts", "long-contexts"])
    parser.add_argument("--policies", nargs="+", default=["all", "kv:1.0", "kv:1.5"])
    parser.add_argument("--kv-cache-bytes", type=int, default=12 * MiB)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk-budget", type=int, default=1024, help="max_num_batched_tokens of the siblings check")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = str(Path(args.model).resolve())
    report: dict[str, Any] = {"siblings": [siblings(model, args.kv_cache_bytes, budget, 3000)
                                           for budget in (DEFAULT_MAX_NUM_BATCHED_TOKENS, args.chunk_budget)]}
    for check in report["siblings"]:
        print(f"siblings added at once, max_num_batched_tokens {check['max_num_batched_tokens']}: cached "
              f"{check['cached_prompt_tokens']} (ideal {check['ideal']})", file=sys.stderr, flush=True)
    engine_kwargs = engine_args(model, args.kv_cache_bytes, DEFAULT_MAX_NUM_SEQS, DEFAULT_MAX_NUM_BATCHED_TOKENS,
                                DEFAULT_MAX_MODEL_LEN)
    del engine_kwargs["model"]
    engine = Engine(model, engine_kwargs)
    cache = engine.llm.llm_engine.vllm_config.cache_config
    block_size, blocks = int(cache.block_size), int(cache.num_gpu_blocks)
    report["config"] = {"engine_args": engine_kwargs, "block_size": block_size, "kv_blocks": blocks,
                        "rounds": args.rounds, "policies": args.policies}
    tokenizer = ModelTokenizer.load(model)
    try:
        engine.generate([EngineRequest("warm", list(range(100, 140)), Params.model_validate({"max_tokens": 8}), [])])
        for name in args.workloads:
            params = {"temperature": 0, "ignore_eos": True}
            requests = sorted((EngineRequest(r.id, tokenizer.with_bos(tokenizer.encode(r.prompt)),
                                             Params.model_validate({**params, "max_tokens": r.max_tokens}), [])
                               for r in make_workload(name, 1.0, tokenizer)), key=lambda r: r.prompt_token_ids)
            prompts = [r.prompt_token_ids for r in requests]
            ideal = round(ideal_cached_tokens(prompts, block_size) / sum(len(p) for p in prompts), 4)
            runs: list[dict[str, Any]] = []
            reference: dict[str, list[int]] | None = None
            for round_number in range(args.rounds):
                for policy in args.policies:
                    measured, outputs = run_policy(engine, policy, requests, blocks, block_size)
                    reference = reference or outputs
                    measured.update(policy=policy, round=round_number,
                                    outputs_differing=sum(outputs[key] != ids for key, ids in reference.items()))
                    runs.append(measured)
                    print(f"{name:<14} {policy:<8} {measured['seconds']:6.2f} s  hit {measured['hit_rate']} "
                          f"(ideal {ideal})  preemptions {measured['preemptions']:3}  steps {measured['steps']:4}  "
                          f"outputs differing {measured['outputs_differing']}", file=sys.stderr, flush=True)
            mean = {policy: round(sum(r["seconds"] for r in runs if r["policy"] == policy) / args.rounds, 3)
                    for policy in args.policies}
            report[name] = {"ideal_hit_rate": ideal, "runs": runs, "mean_seconds": mean}
            print(f"{name:<14} mean seconds {mean}", file=sys.stderr, flush=True)
    finally:
        engine.close()
    print_report(report, args.json)


if __name__ == "__main__":
    main()

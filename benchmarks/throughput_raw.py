"""System (a): plain ``vllm.LLM.generate`` over a workload file, as a user's script would do it.

Run as a child of ``throughput.py`` (``python benchmarks/throughput_raw.py SPEC.json OUT.json``): it builds one
engine (not timed), then times each run in SPEC: read the file, tokenize with the ``tokenizers`` library
(dscbatch's ModelTokenizer: the correct ids), ``LLM.generate`` with token prompts, write the outputs. The
prefix cache is reset between runs, so no run profits from the one before. Each finished run is added to
OUT at once, so a crash later keeps what was measured.

Orders: ``file`` (one generate call over the file), ``sorted`` (one call, requests sorted by prompt ids by
hand: shared prefixes become neighbours), ``shards`` (one call per consecutive shard of ``shard_size``), and
``script``: the plain script issue 23 compares dscbatch with, end to end with a warm engine: read the file,
tokenize every prompt in one batch (``encode_many``, on all cores), sort by prompt ids, one generate call,
write the outputs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from throughput_common import Totals, measurement, tree_cpu_seconds

from dscbatch.jobs.tokenizer import ModelTokenizer


def preemptions(llm: Any) -> int:
    """vLLM's count of preempted requests so far (its ``vllm:num_preemptions`` counter)."""
    return int(sum(getattr(metric, "value", 0) for metric in llm.get_metrics()
                   if metric.name == "vllm:num_preemptions"))


def generate(llm: Any, run: dict[str, Any], model: str) -> dict[str, Any]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    preempted = preemptions(llm)
    cpu = tree_cpu_seconds([os.getpid()])
    started = time.perf_counter()
    tokenizer = ModelTokenizer.load(model)
    with open(run["input"], encoding="utf-8") as stream:
        lines = [json.loads(line) for line in stream]
    texts = [line["prompt"] for line in lines]
    encoded = tokenizer.encode_many(texts) if run["order"] == "script" else [tokenizer.encode(t) for t in texts]
    prompts = [TokensPrompt(prompt_token_ids=tokenizer.with_bos(ids)) for ids in encoded]
    params = [SamplingParams(**line["params"]) for line in lines]
    order = list(range(len(lines)))
    if run["order"] in ("sorted", "script"):
        order.sort(key=lambda i: prompts[i]["prompt_token_ids"])
    size = run["shard_size"] if run["order"] == "shards" else len(order)
    outputs: list[Any] = [None] * len(lines)
    engine_started = time.perf_counter()
    for start in range(0, len(order), size):
        chunk = order[start:start + size]
        results = llm.generate([prompts[i] for i in chunk], [params[i] for i in chunk], use_tqdm=False)
        for i, result in zip(chunk, results, strict=True):
            outputs[i] = result
    with open(run["output"], "w", encoding="utf-8") as stream:
        for line, output in zip(lines, outputs, strict=True):
            completion = output.outputs[0]
            stream.write(json.dumps({"id": line["id"], "text": completion.text,
                                     "completion_tokens": len(completion.token_ids),
                                     "prompt_tokens": len(output.prompt_token_ids),
                                     "cached_prompt_tokens": output.num_cached_tokens or 0}) + "\n")
    seconds = time.perf_counter() - started
    cpu = tree_cpu_seconds([os.getpid()]) - cpu
    totals = Totals(requests=len(lines),
                    prompt_tokens=sum(len(o.prompt_token_ids) for o in outputs),
                    cached_prompt_tokens=sum(o.num_cached_tokens or 0 for o in outputs),
                    generated_tokens=sum(len(c.token_ids) for o in outputs for c in o.outputs))
    return measurement(seconds, totals, output=run["output"], preemptions=preemptions(llm) - preempted,
                       before_engine_s=round(engine_started - started, 3), cpu_s=round(cpu, 2))


def main() -> None:
    spec_path, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    spec = json.loads(spec_path.read_text())
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    started = time.perf_counter()
    llm = LLM(**spec["engine_args"])
    report: dict[str, Any] = {"engine_start_s": round(time.perf_counter() - started, 2), "runs": {},
                              "block_size": llm.llm_engine.vllm_config.cache_config.block_size}
    # The first generate call pays one-off costs; dscbatch's workers are warm too when their clock starts.
    llm.generate([TokensPrompt(prompt_token_ids=list(range(100, 140)))], SamplingParams(max_tokens=8),
                 use_tqdm=False)
    for run in spec["runs"]:
        llm.reset_prefix_cache()
        report["runs"][run["key"]] = generate(llm, run, spec["model"])
        partial = out_path.with_suffix(".partial")
        partial.write_text(json.dumps(report))
        partial.replace(out_path)  # atomic: the parent reads OUT while this runs
    llm.llm_engine.engine_core.shutdown()


if __name__ == "__main__":
    main()

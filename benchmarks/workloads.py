"""Throughput workloads (issue 4): seeded, written as dscbatch-native JSONL and as OpenAI batch JSONL.

Usage: ``python benchmarks/workloads.py --out DIR [--scale 1.0] [--model DIR]``. Prompt lengths are counted
with the model's own tokenizer (the ids dscbatch and the baselines send), so that a context of "740 tokens"
is 740 tokens; ``--scale`` multiplies request counts, never lengths. Every request is greedy with
``ignore_eos``, so each system generates exactly ``max_tokens`` per request and token counts can be compared.

- ``unique``: unique prompts, fixed output length.
- ``interleaved``: repository-like contexts (a long code prefix) each followed by several short questions,
  shuffled so that the file interleaves contexts; together far more context tokens than the KV cache holds.
- ``duplicates``: 30% of the lines repeat an earlier line's prompt and params exactly, under another id.
- ``varying``: output lengths drawn log-uniformly from 4..512, unique prompts.
- ``many-contexts`` and ``long-contexts`` (issue 15): the interleaved shape under KV pressure, sized for a 12 MiB
  KV cache (``--kv-cache-bytes 12582912``): 80 contexts of ~715 tokens x 4 questions, and 24 contexts of
  ~3,150 tokens x 6 questions, shuffled.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dscbatch.jobs.tokenizer import ModelTokenizer, model_name

DEFAULT_MODEL = str(Path(__file__).resolve().parent.parent / ".cache" / "tiny-deepseek-coder")
WORKLOADS = ("unique", "interleaved", "duplicates", "varying", "many-contexts", "long-contexts")
# What runs unless --workloads names others: the two KV-pressure workloads are sized for a 12 MiB cache.
DEFAULT_WORKLOADS = WORKLOADS[:4]


@dataclass(frozen=True)
class Sizes:
    requests: int = 0  # interleaved has contexts x questions
    prompt_tokens: int = 0  # interleaved: per context
    max_tokens: int = 0
    contexts: int = 0
    questions: int = 0
    repeat_fraction: float = 0.0
    min_tokens: int = 0  # varying: max_tokens is drawn from min_tokens..max_tokens


# Sizes at scale 1, for about 20-45 s per system and workload on 2 CPU cores with the tiny model. The issue
# measured 640 requests over 160 contexts of ~740 tokens, 32 new tokens, 24 MiB of KV cache (24k tokens of the
# tiny model): 286 s in file order, 153 s sorted. Plain vLLM.generate does that shape here in ~17 s and
# ~11 s, so interleaved is 1.6x the shape (190k context tokens, 7.7x the cache) rather than less.
UNIQUE = Sizes(requests=2048, prompt_tokens=160, max_tokens=64)
INTERLEAVED = Sizes(contexts=256, questions=4, prompt_tokens=740, max_tokens=32)
DUPLICATES = Sizes(requests=1024, prompt_tokens=160, max_tokens=64, repeat_fraction=0.3)
VARYING = Sizes(requests=640, prompt_tokens=96, min_tokens=4, max_tokens=512)
# Issue 15's shapes: 320 requests of ~730 prompt tokens, 4 per context; 144 of ~3,170, 6 per context.
MANY_CONTEXTS = Sizes(contexts=80, questions=4, prompt_tokens=715, max_tokens=32)
LONG_CONTEXTS = Sizes(contexts=24, questions=6, prompt_tokens=3150, max_tokens=32)

WORDS = ("user", "order", "item", "cache", "index", "token", "batch", "shard", "queue", "result", "config", "path",
         "buffer", "record", "worker", "job", "state", "value", "count", "total", "limit", "offset", "name", "node",
         "graph", "edge", "score", "model", "prompt", "stream", "header", "payload", "session", "request", "retry")
VERBS = ("load", "save", "parse", "build", "merge", "split", "check", "update", "fetch", "render", "encode",
         "decode", "compute", "collect", "filter", "resolve", "validate", "flush", "schedule", "read", "write")
MODULES = ("os", "re", "json", "time", "math", "random", "typing", "pathlib", "itertools", "functools", "logging",
           "dataclasses", "collections", "hashlib", "subprocess")
QUESTIONS = ("What does {f} return when {a} is empty?", "Write a unit test for {f}.",
             "Is there a bug in {f}? Explain briefly.", "Rewrite {f} without the loop.",
             "What is the time complexity of {f}?", "Add type hints to {f}.", "Which functions call {f}?",
             "Document the parameter {a} of {f}.", "How would {f} handle a {w} of None?",
             "Summarize what {c} is used for.")


@dataclass(frozen=True)
class Request:
    id: str
    prompt: str
    max_tokens: int


class CodeWriter:
    """Random-but-plausible Python source, one statement at a time, sized in the model's tokens."""

    def __init__(self, rng: random.Random, tokenizer: ModelTokenizer) -> None:
        self.rng = rng
        self.tokenizer = tokenizer
        self.functions: list[tuple[str, str]] = []  # (function name, first argument) for questions
        self.classes: list[str] = []
        self.asked: set[str] = set()

    def ident(self) -> str:
        return f"{self.rng.choice(WORDS)}_{self.rng.choice(WORDS)}"

    def _function(self) -> str:
        name = f"{self.rng.choice(VERBS)}_{self.ident()}"
        args = [self.ident() for _ in range(self.rng.randint(1, 3))]
        self.functions.append((name, args[0]))
        body = [f"def {name}({', '.join(args)}):", f'    """{self.rng.choice(VERBS).capitalize()} the '
                f'{self.rng.choice(WORDS)} of {args[0]}."""']
        for _ in range(self.rng.randint(2, 6)):
            target, source, call = self.ident(), self.rng.choice(args), self.rng.choice(VERBS)
            body.append(self.rng.choice((
                f"    {target} = {call}_{self.rng.choice(WORDS)}({source}, {self.rng.randint(0, 99)})",
                f"    if {source} > {self.rng.randint(0, 999)}:\n        return {source}",
                f"    for {target} in {source}:\n        {self.ident()}.append({target})",
                f"    # {self.rng.choice(VERBS)} {self.rng.choice(WORDS)} before {self.rng.choice(WORDS)}",
            )))
        body.append(f"    return {self.rng.choice(args)}")
        return "\n".join(body) + "\n\n"

    def _class(self) -> str:
        name = "".join(word.capitalize() for word in self.ident().split("_"))
        self.classes.append(name)
        fields = "\n".join(f"    {self.ident()}: {self.rng.choice(('int', 'str', 'float', 'list'))}"
                           for _ in range(self.rng.randint(2, 4)))
        return f"@dataclass\nclass {name}:\n{fields}\n\n"

    def source(self, tokens: int) -> str:
        """A module of at least ``tokens`` tokens, ending at the first line that reaches them."""
        imports = sorted(self.rng.sample(MODULES, 3))
        parts = [f"# {self.ident()}.py\n" + "".join(f"import {m}\n" for m in imports) + "\n"]
        count = len(self.tokenizer.encode(parts[0]))
        while count < tokens:
            # Line by line, so the module ends within a line of the target (a file cut mid-function is fine).
            for line in (self._class() if self.rng.random() < 0.2 else self._function()).splitlines(True):
                parts.append(line)
                count += len(self.tokenizer.encode(line))  # lines end with newlines: their counts add up
                if count >= tokens:
                    break
        return "".join(parts)

    def question(self) -> str:
        """A question about this writer's code, never one it asked before (prompts stay unique)."""
        while True:
            function, argument = self.rng.choice(self.functions) if self.functions else ("main", "args")
            text = self.rng.choice(QUESTIONS).format(f=function, a=argument, w=self.rng.choice(WORDS),
                                                     c=self.rng.choice(self.classes or ["Config"]))
            if text not in self.asked:
                self.asked.add(text)
                return f"\n# Question: {text}\n# Answer:"


def unique(rng: random.Random, tokenizer: ModelTokenizer, scale: float) -> list[Request]:
    size = UNIQUE
    return [Request(f"u{i}", CodeWriter(rng, tokenizer).source(size.prompt_tokens), size.max_tokens)
            for i in range(_count(size.requests, scale))]


def interleaved(rng: random.Random, tokenizer: ModelTokenizer, scale: float,
                size: Sizes = INTERLEAVED) -> list[Request]:
    requests = []
    for c in range(_count(size.contexts, scale)):
        writer = CodeWriter(rng, tokenizer)
        context = writer.source(size.prompt_tokens)
        requests += [Request(f"ctx{c}-q{q}", context + writer.question(), size.max_tokens)
                     for q in range(size.questions)]
    rng.shuffle(requests)  # as a file gathered from many repositories would come: contexts interleaved
    return requests


def duplicates(rng: random.Random, tokenizer: ModelTokenizer, scale: float) -> list[Request]:
    size = DUPLICATES
    count = _count(size.requests, scale)
    repeats = set(rng.sample(range(1, count), round(size.repeat_fraction * count))) if count > 1 else set()
    requests: list[Request] = []
    for i in range(count):
        if i in repeats:
            earlier = rng.choice(requests)
            requests.append(Request(f"d{i}", earlier.prompt, earlier.max_tokens))
        else:
            requests.append(Request(f"d{i}", CodeWriter(rng, tokenizer).source(size.prompt_tokens),
                                    size.max_tokens))
    return requests


def varying(rng: random.Random, tokenizer: ModelTokenizer, scale: float) -> list[Request]:
    size = VARYING
    low, high = math.log(size.min_tokens), math.log(size.max_tokens)
    return [Request(f"v{i}", CodeWriter(rng, tokenizer).source(size.prompt_tokens),
                    round(math.exp(rng.uniform(low, high))))
            for i in range(_count(size.requests, scale))]


def many_contexts(rng: random.Random, tokenizer: ModelTokenizer, scale: float) -> list[Request]:
    return interleaved(rng, tokenizer, scale, MANY_CONTEXTS)


def long_contexts(rng: random.Random, tokenizer: ModelTokenizer, scale: float) -> list[Request]:
    return interleaved(rng, tokenizer, scale, LONG_CONTEXTS)


GENERATORS: dict[str, Callable[[random.Random, ModelTokenizer, float], list[Request]]] = {
    "unique": unique, "interleaved": interleaved, "duplicates": duplicates, "varying": varying,
    "many-contexts": many_contexts, "long-contexts": long_contexts}


def _count(base: int, scale: float) -> int:
    return max(1, round(base * scale))


def make_workload(name: str, scale: float, tokenizer: ModelTokenizer, seed: int = 0) -> list[Request]:
    # One seed per workload (not one stream for all), so a workload does not change when another does.
    return GENERATORS[name](random.Random(f"{seed}:{name}"), tokenizer, scale)


def params(request: Request) -> dict[str, object]:
    return {"max_tokens": request.max_tokens, "temperature": 0, "ignore_eos": True}


def ideal_cached_tokens(prompts: list[list[int]], block_size: int) -> int:
    """The prompt tokens a prefix cache of ``block_size``-token blocks can serve at best: for each prompt, in
    sorted order, the longest prefix in whole blocks that it shares with an earlier prompt (in sorted order the
    one before it shares the most), at most its length less one (vLLM always computes a prompt's last token).
    A cache that never evicts, and never schedules a prompt before the blocks it shares exist, reaches it."""
    ordered = sorted(prompts)
    cached = 0
    for before, ids in itertools.pairwise(ordered):
        cached += min(shared_length(before, ids), len(ids) - 1) // block_size * block_size
    return cached


def shared_length(a: list[int], b: list[int]) -> int:
    """How many leading token ids two prompts share."""
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def write_native(requests: list[Request], path: Path) -> None:
    with path.open("w", encoding="ascii") as stream:
        for r in requests:
            stream.write(json.dumps({"id": r.id, "type": "completion", "prompt": r.prompt,
                                     "params": params(r)}) + "\n")


def write_openai(requests: list[Request], path: Path, model: str) -> None:
    with path.open("w", encoding="ascii") as stream:
        for r in requests:
            body = {"model": model_name(model), "prompt": r.prompt, **params(r)}
            stream.write(json.dumps({"custom_id": r.id, "method": "POST", "url": "/v1/completions",
                                     "body": body}) + "\n")


def write_workloads(out: Path, names: list[str], scale: float, model: str, seed: int = 0) -> dict[str, Path]:
    """Write ``NAME.jsonl`` (native) and ``NAME.openai.jsonl`` per workload; returns the native paths."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = ModelTokenizer.load(model)
    paths = {}
    for name in names:
        requests = make_workload(name, scale, tokenizer, seed)
        paths[name] = out / f"{name}.jsonl"
        write_native(requests, paths[name])
        write_openai(requests, out / f"{name}.openai.jsonl", model)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="tokenizer used to size prompts")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(DEFAULT_WORKLOADS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, path in write_workloads(args.out, args.workloads, args.scale, args.model, args.seed).items():
        print(f"{name}: {sum(1 for _ in path.open())} requests in {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Curation quality: near-dup precision and recall, decontamination and the syntax filter, on real data.

Usage: ``python benchmarks/curate_quality.py [--files 10000] [--planted 2000] [--real 5000] [--json out.json]``.

- near-dup: ``--files`` real Python files (the standard library's) and ``--planted``
  near-copies of some of them (renamed identifiers, reordered top-level blocks, reworded comments and changed
  whitespace), scored against every pair whose exact Jaccard similarity of word 5-gram sets is at or above
  the threshold: precision over every pair of samples in one cluster (and over the pairs the step joined
  clusters by), recall over those pairs (caught when both ended in one cluster).
- decontamination: HumanEval's 164 problems (prompt and canonical solution, and the same with the function's
  variables renamed) and HumanEval-X's other five languages planted among ``--real`` real files.
- syntax: every HumanEval-X canonical solution (cpp, go, java, js, python, rust) must parse, and none with
  its last closing bracket deleted.

The evaluation files are read from ``../shared/eval`` beside the checkout (or ``$DSCBATCH_TEST_EVAL_DIR``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from curate_corpus import cluster_pairs, exact_pairs, near_copy, read_corpus, rename_variables
from reader import print_report

from dscbatch.curation.clusters import Groups
from dscbatch.curation.config import Decontaminate, Near
from dscbatch.curation.decontaminate import Index
from dscbatch.curation.minhash import Signatures
from dscbatch.curation.syntax import parses
from dscbatch.jobs.humaneval_data import humaneval_path

ROOT = Path(__file__).resolve().parent.parent
EVAL_DIR = Path(os.environ.get("DSCBATCH_TEST_EVAL_DIR", ROOT.parent / "shared" / "eval"))
HUMANEVAL_X = {"cpp": "cpp", "go": "go", "java": "java", "js": "javascript", "python": "python", "rust": "rust"}


def near_dup(files: int, planted: int, step: Near, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    texts = read_corpus(files, seed)
    edits: dict[str, int] = {}
    for _ in range(planted):
        edit, copy = near_copy(texts[rng.randrange(files)], rng)
        edits[edit] = edits.get(edit, 0) + 1
        texts.append(copy)
    started = time.perf_counter()
    signatures = Signatures(step)
    for number, text in enumerate(texts):
        signatures.add(number, 0, text)
    groups = Groups(len(texts))
    joined = set(signatures.cluster(groups))
    seconds = time.perf_counter() - started
    clustered = cluster_pairs(groups.members(range(len(texts))).values())
    truth = exact_pairs(texts, step.shingle, step.threshold)
    caught = sum(groups.find(a) == groups.find(b) for a, b in truth)
    return {"documents": len(texts), "real_files": files, "planted": planted, "edits": edits,
            "params": step.model_dump(), "pairs_above_threshold": len(truth),
            # every pair of samples the step put in one cluster, and the pairs it joined clusters by
            "pairs_in_clusters": len(clustered), "pairs_joined": len(joined),
            "precision": _share(len(clustered & truth), len(clustered)),
            "precision_joined": _share(len(joined & truth), len(joined)),
            "recall": _share(caught, len(truth)), "seconds": round(seconds, 2)}


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 1.0


def _jsonl(path: Path | str) -> list[dict[str, Any]]:
    with gzip.open(path, "rt") if str(path).endswith(".gz") else open(path) as stream:
        return [json.loads(line) for line in stream if line.strip()]


def planted_problems() -> list[tuple[str, str]]:
    """(label, text) of every planted benchmark sample: HumanEval's problems with solutions, the same with
    renamed variables, and HumanEval-X's other languages."""
    planted = []
    for problem in _jsonl(humaneval_path("benchmark=PATH")):
        program = problem["prompt"] + problem["canonical_solution"]
        planted.append((problem["task_id"], program))
        planted.append((problem["task_id"] + " renamed", rename_variables(program)))
    for short in ("cpp", "go", "java", "js", "rust"):
        for problem in _jsonl(EVAL_DIR / "humaneval-x" / f"humaneval_{short}.jsonl.gz"):
            head = problem["declaration"] if short == "rust" else problem["prompt"]
            planted.append((problem["task_id"], head + problem["canonical_solution"]))
    return planted


def benchmark_files() -> list[str]:
    return ["humaneval", *(str(EVAL_DIR / "humaneval-x" / f"humaneval_{short}.jsonl.gz") for short in HUMANEVAL_X)]


def decontamination(real: int, step: Decontaminate, seed: int = 1) -> dict[str, Any]:
    index = Index(step)
    texts = read_corpus(real, seed)
    started = time.perf_counter()
    real_removed = [(number, reason) for number, text in enumerate(texts)
                    if (reason := index.match(text)) is not None]
    planted = planted_problems()
    missed = [label for label, text in planted if index.match(text) is None]
    renamed = [label for label, _ in planted if label.endswith("renamed")]
    return {"params": step.model_dump(), "real_files": real, "real_removed": len(real_removed),
            "real_removed_share": round(len(real_removed) / real, 5),
            "real_removed_examples": [reason for _, reason in real_removed[:5]], "planted": len(planted),
            "planted_renamed": len(renamed), "planted_removed": len(planted) - len(missed), "missed": missed[:10],
            "seconds": round(time.perf_counter() - started, 2)}


def _closers(node: Any, found: list[Any]) -> None:
    if node.child_count == 0 and node.type in (")", "]", "}") and not node.is_missing:
        found.append(node)
    for child in node.children:
        _closers(child, found)


def without_last_bracket(code: str, language: str) -> str:
    """``code`` with its last closing bracket token (not one in a string or comment) deleted."""
    from tree_sitter_language_pack import get_parser

    data = code.encode()
    found: list[Any] = []
    _closers(get_parser(language).parse(data).root_node, found)  # type: ignore[arg-type]
    cut = found[-1].start_byte
    return (data[:cut] + data[cut + 1:]).decode()


def syntax_check() -> dict[str, Any]:
    report: dict[str, Any] = {}
    for short, language in HUMANEVAL_X.items():
        problems = _jsonl(EVAL_DIR / "humaneval-x" / f"humaneval_{short}.jsonl.gz")
        programs = [(problem["declaration"] if short == "rust" else problem["prompt"]) + problem["canonical_solution"]
                    for problem in problems]
        kept = sum(parses(program, language) for program in programs)
        dropped = sum(not parses(without_last_bracket(program, language), language) for program in programs)
        report[short] = {"solutions": len(programs), "kept": kept, "broken_dropped": dropped}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--planted", type=int, default=2000)
    parser.add_argument("--real", type=int, default=5000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    report = {"near_dup": near_dup(args.files, args.planted, Near()),
              "decontamination": decontamination(args.real, Decontaminate(benchmark=benchmark_files())),
              "syntax": syntax_check()}
    print_report(report, args.json)


if __name__ == "__main__":
    main()

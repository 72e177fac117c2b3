"""Languages benchmark: executions/s per language on HumanEval-X's canonical solutions, in the sandbox against the
same driver run bare (no bwrap, no limits) in the same run, so that the sandbox's cost is a ratio.

Usage: ``python benchmarks/languages.py [--languages cpp,java] [--problems N] [--check] [--json out.json]``. The
data is read in place from ``../shared/eval/humaneval-x`` (or ``--data DIR``). Programs run one per core at once.
``--check`` also asserts what the issue asks of every toolchain: all canonical solutions pass and every bare prompt
fails (it prints the task ids that do not), except the canonical solutions HumanEval-X itself gets wrong
(``DATA_DEFECTS``, docs/evaluation-languages.md), which it prints with the reason. Go's tests need its vendored
module and Rust's the crates built once in the sandbox, which only the sandbox mounts: Go and Rust are measured in
it only. The canonical programs are trusted code (the bare runs execute nothing else).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dscbatch.executor.languages import MODULES_DIR, PYTHON, Language, language
from dscbatch.executor.problems import read_records
from dscbatch.executor.programs import LanguageProblem, completion_program
from dscbatch.executor.sandbox import Limits, Sandbox
from dscbatch.executor.toolchain import MODULES, Resources, Toolchains, driver

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "eval" / "humaneval-x"
FILES = {"cpp": "cpp", "go": "go", "java": "java", "js": "js", "python": "python", "rs": "rust"}
# Canonical solutions that fail HumanEval-X's own tests under HumanEval-X's own harness (CodeGeeX's execution.py:
# node fails on any output, `go test`, cargo with rand): defects of the data, not of the toolchains.
DATA_DEFECTS = {
    "JavaScript/112": "returns (z, false): the comma operator gives false, not ['bcd', false]",
    "JavaScript/155": "evenOddCount(0) is [0, 0] (the loop never runs); the test expects [1, 0]",
    "Go/95": "reads only the first two keys in Go's randomised map order: fails about 1 run in 4",
    "Rust/50": "calls rand 0.7's gen_range(a, b) (CodeGeeX pins rand 0.4); Debian bookworm packages rand 0.8 only",
}


def bare(lang: Language, program: str) -> bool:
    """Run the driver (or the Python program) without the sandbox, with the sandbox's Python and flags, in a
    private directory; True if it passed."""
    # In memory, as the sandbox's tmpfs is: a compiler's temporary files on a disk-backed /tmp cost more.
    memory = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="dscbatch-bare-", dir=memory) as directory:
        code = program if lang is PYTHON else driver(lang, program, workdir=directory)
        # The test modules dscbatch ships, where they are on the host rather than where the sandbox mounts them.
        env = {name: value.replace(MODULES_DIR, str(MODULES / lang.modules)) for name, value in lang.env.items()}
        done = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", code], cwd=directory, capture_output=True,
                              timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": directory, "TMPDIR": directory,
                                                **env})
        return done.returncode == 0


def measure(name: str, run: Any, programs: list[str], workers: int) -> tuple[float, list[bool]]:
    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(run, programs))
    return len(programs) / (time.monotonic() - started), outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--languages", default="python,cpp,java,js,go,rs")
    parser.add_argument("--problems", type=int, default=164)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    toolchains = Toolchains(Sandbox(Limits(wall_seconds=10, cpu_seconds=10)), Resources(go_module=str(args.data)))
    workers = os.cpu_count() or 1
    results: dict[str, Any] = {"cores": workers, "languages": {}}
    failures = []
    for code in args.languages.split(","):
        lang = language(code)
        problems = read_records(str(args.data / f"humaneval_{FILES[lang.code]}.jsonl.gz"), LanguageProblem)
        problems = problems[:args.problems]
        programs = [completion_program(lang, problem, problem.canonical_solution or "") for problem in problems]
        sandboxed, verdicts = measure("sandbox", lambda p, lang=lang: toolchains.run(lang, p).passed, programs,
                                      workers)
        row: dict[str, Any] = {"programs": len(programs), "passed": sum(verdicts), "sandbox_per_s": sandboxed}
        if lang.code not in ("go", "rs"):  # their dependencies are mounted by the sandbox only
            row["bare_per_s"], _ = measure("bare", lambda p, lang=lang: bare(lang, p), programs, workers)
            row["sandbox_over_bare"] = sandboxed / row["bare_per_s"]
        if args.check:
            empty = [completion_program(lang, problem, "") for problem in problems]
            _, bare_verdicts = measure("bare prompts", lambda p, lang=lang: toolchains.run(lang, p).passed, empty,
                                       workers)
            row["bare_prompts_passed"] = sum(bare_verdicts)
            for problem, ok in zip(problems, verdicts, strict=True):
                if not ok and problem.task_id in DATA_DEFECTS:
                    print(f"{lang.code}: canonical {problem.task_id} failed, a defect of the data: "
                          f"{DATA_DEFECTS[problem.task_id]}")
                elif not ok:
                    failures.append(f"{lang.code}: canonical {problem.task_id} failed")
            failures += [f"{lang.code}: bare prompt {problem.task_id} passed"
                         for problem, ok in zip(problems, bare_verdicts, strict=True) if ok]
        results["languages"][lang.code] = row
        print(lang.code, json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if failures:
        print("\n".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()

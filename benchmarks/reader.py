"""Reader benchmark: validation lines/s and peak memory, against plain ``json.loads`` in the same run.

Usage: ``python benchmarks/reader.py [--lines 1000000] [--json out.json]``. Each measurement runs in its own
process so that peak RSS is its own; memory is bounded when the 10x larger file peaks at about the same RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def make_file(path: Path, lines: int) -> None:
    rng = random.Random(0)
    kinds = [
        lambda i: {"id": f"c{i}", "prompt": f"def f{i}(x):\n    return x * {rng.random()}\n"},
        lambda i: {"id": f"f{i}", "prefix": "def g():\n    ", "suffix": f"\n# {i}\n"},
        lambda i: {"id": f"h{i}", "messages": [{"role": "user", "content": f"Explain snippet {i}."}]},
        lambda i: {"id": f"r{i}", "files": [{"path": "a.py", "content": "X = 1\n"}],
                   "target": {"path": "b.py", "prefix": "from a import X\n"}},
    ]
    with path.open("w") as stream:
        for i in range(lines):
            stream.write(json.dumps(kinds[i % 4](i)) + "\n")


def print_report(report: dict[str, Any], path: Path | None) -> None:
    """Print a benchmark's report, and write it as JSON to ``path`` when one is given."""
    text = json.dumps(report, indent=2)
    print(text)
    if path is not None:
        path.write_text(text + "\n")


def measure(mode: str, path: str) -> None:
    started = time.perf_counter()
    if mode == "json":
        with open(path, "rb") as stream:
            count = sum(1 for line in stream if json.loads(line))
    else:
        from dscbatch.jobs.reader import check_file

        count = check_file(path).requests
    seconds = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"lines": count, "seconds": seconds, "lines_per_s": count / seconds, "peak_rss_mb": rss_mb}))


def run(mode: str, path: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--measure", mode, str(path)], check=True,
                         capture_output=True, text=True).stdout
    return dict(json.loads(out))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--measure", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(*args.measure)
        return
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "small.jsonl", Path(tmp) / "large.jsonl"
        make_file(small, args.lines // 10)
        make_file(large, args.lines)
        report = {"baseline_json_loads": run("json", large), "dscbatch_small": run("dscbatch", small),
                  "dscbatch": run("dscbatch", large)}
    baseline = report["baseline_json_loads"]
    report["ratio_speed_vs_json_loads"] = report["dscbatch"]["lines_per_s"] / baseline["lines_per_s"]
    report["ratio_rss_10x_lines"] = report["dscbatch"]["peak_rss_mb"] / report["dscbatch_small"]["peak_rss_mb"]
    print_report(report, args.json)


if __name__ == "__main__":
    main()

"""What ``make demo``'s results show: whether each Python answer parses, and what the model's FIM is worth.

Usage: ``python scripts/demo_check.py RESULTS MODEL_DIR``. For each completion, chat and FIM result it prints
one line: the completion cut as DeepSeek's HumanEval base scripts cut it (executor/extraction.py), the chat
answer's first ```python block, or the FIM program (prefix, middle, suffix), and whether that parses with
``ast``. A model folder converted by scripts/fetch_model.py adds its note on FIM.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path
from typing import Any

from dscbatch.executor.extraction import first_code_block, truncate


def _inputs(path: Path) -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {line["id"]: line for line in lines if "id" in line}


def python_program(line: dict[str, Any], text: str) -> str | None:
    """The Python a result's text makes, or None for a line whose answer is not Python."""
    kind = line.get("type") or ("chat" if "messages" in line else "completion")
    if kind == "completion":
        return str(line["prompt"]) + truncate(text)
    if kind == "fim":
        return f"{line['prefix']}{text}{line['suffix']}"
    if kind == "chat" and "Python" in line["messages"][-1]["content"]:
        return first_code_block(text) or text
    return None


def parses(code: str) -> bool:
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("results", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("--input", type=Path, default=Path(__file__).resolve().parent.parent / "examples"
                        / "prompts.jsonl")
    args = parser.parse_args()
    inputs = _inputs(args.input)
    for record in map(json.loads, args.results.read_text(encoding="utf-8").splitlines()):
        line = inputs.get(record.get("id", ""))
        if line is None or not record.get("outputs"):
            continue
        code = python_program(line, record["outputs"][0]["text"])
        if code is not None:
            verdict = "parses as Python" if parses(code) else "does NOT parse as Python"
            if record["outputs"][0]["finish_reason"] == "length":
                verdict += " (it ran to its max_tokens: no end token came)"
            print(f"demo: {record['id']}: the {record['type']} answer {verdict}")
    source = args.model / "dscbatch-source.json"
    if source.is_file():
        print(f"demo: FIM with this model: {json.loads(source.read_text(encoding='utf-8'))['fim']}")


if __name__ == "__main__":
    main()

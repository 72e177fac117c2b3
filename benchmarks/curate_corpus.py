"""The real code corpus the curation benchmarks and tests measure on, and the edits that plant near-duplicates.

The corpus is the Python files of the standard library (13,353 on CPython 3.11.7), read in a fixed order.
``exact_pairs`` finds every pair of documents whose shingle sets have
an exact Jaccard similarity at or above a threshold (prefix filtering: a pair that similar shares a shingle
among the rarest ``|A| - ceil(t|A|) + 1`` of each), the ground truth the near-dedup step is scored against.
"""

from __future__ import annotations

import ast
import io
import json
import keyword
import math
import random
import re
import sysconfig
import tokenize
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from dscbatch.curation.minhash import shingles

MAX_FILE_BYTES = 200_000
NAME = re.compile(r"\b[A-Za-z_]\w*\b")


def corpus_files() -> list[Path]:
    # The standard library only (13,353 files on CPython 3.11.7): the same on every machine with that Python.
    # A virtual environment's packages differ by what was installed when; they also vendor one another's files,
    # so its real near-duplicates form large clusters that the planted pairs never measure.
    root = Path(sysconfig.get_paths()["stdlib"])
    found = sorted(path for path in root.rglob("*.py") if path.is_file())
    return [path for path in found if 200 < path.stat().st_size <= MAX_FILE_BYTES]


def read_corpus(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct real files (a seeded sample; identical texts are left out)."""
    files = corpus_files()
    random.Random(seed).shuffle(files)
    texts: list[str] = []
    seen: set[str] = set()
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        if text not in seen:
            seen.add(text)
            texts.append(text)
            if len(texts) == count:
                break
    return texts


def rename_identifiers(text: str, rng: random.Random, share: float) -> str:
    """``share`` of the file's distinct identifiers (not keywords) renamed, each everywhere."""
    names = sorted({name for name in NAME.findall(text) if not keyword.iskeyword(name)})
    chosen = {name: f"{name}_{rng.randrange(10**6)}" for name in rng.sample(names, int(len(names) * share))}
    return NAME.sub(lambda found: chosen.get(found.group(0), found.group(0)), text)


def reorder_blocks(text: str, rng: random.Random) -> str:
    """The file's top-level blocks (split before each top-level ``def``/``class``) shuffled."""
    blocks = re.split(r"(?m)^(?=def |class |async def )", text)
    rng.shuffle(blocks)
    return "".join(blocks)


def edit_comments(text: str, rng: random.Random) -> str:
    """Comments reworded, blank lines added and whitespace changed."""
    lines = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            line = line.split("#")[0] + "# note: " + " ".join(reversed(line.split("#", 1)[1].split()))
        lines.append(line.rstrip() + ("\n" if rng.random() < 0.1 else ""))
    return "\n".join(lines) + "\n"


EDITS = ("rename", "reorder", "comments", "rename+reorder")


def near_copy(text: str, rng: random.Random) -> tuple[str, str]:
    """One planted near-duplicate of ``text``: (the edit, the edited text)."""
    edit = rng.choice(EDITS)
    out = text
    if "rename" in edit:
        out = rename_identifiers(out, rng, rng.choice((0.02, 0.05, 0.1, 0.2)))
    if "reorder" in edit:
        out = reorder_blocks(out, rng)
    if edit == "comments":
        out = edit_comments(out, rng)
    return edit, out


def rename_variables(source: str) -> str:
    """A Python function's parameters and local variables renamed (``v0``, ``v1``, ...), strings untouched."""
    tree = ast.parse(source)
    names: list[str] = []
    for node in ast.walk(tree):
        found = node.arg if isinstance(node, ast.arg) else (
            node.id if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) else None)
        if found is not None and found not in names:
            names.append(found)
    mapping = {name: f"v{index}" for index, name in enumerate(names)}
    tokens = [(token.type, mapping.get(token.string, token.string) if token.type == tokenize.NAME else token.string)
              for token in tokenize.generate_tokens(io.StringIO(source).readline)]
    return tokenize.untokenize(tokens)


def exact_pairs(texts: Sequence[str], size: int, threshold: float) -> set[tuple[int, int]]:
    """Every pair (i < j) whose word ``size``-gram sets have Jaccard similarity >= ``threshold``."""
    sets = [frozenset(hash(gram) for gram in shingles(text, size)) for text in texts]
    frequency: Counter[int] = Counter(gram for each in sets for gram in each)
    index: dict[int, list[int]] = {}
    candidates: set[tuple[int, int]] = set()
    for number, each in enumerate(sets):
        ordered = sorted(each, key=lambda gram: (frequency[gram], gram))
        prefix = ordered[:len(ordered) - math.ceil(threshold * len(ordered)) + 1]
        for gram in prefix:
            for other in index.setdefault(gram, []):
                candidates.add((other, number))
            index[gram].append(number)
    return {(a, b) for a, b in candidates
            if sets[a] and len(sets[a] & sets[b]) >= threshold * len(sets[a] | sets[b])}


def cluster_pairs(clusters: Iterable[Sequence[int]]) -> set[tuple[int, int]]:
    return {(a, b) for members in clusters for i, a in enumerate(sorted(members)) for b in sorted(members)[i + 1:]}


def write_results(path: Path, texts: Sequence[str], per_line: int = 1) -> None:
    """``texts`` as a native results file: ``per_line`` outputs per result line."""
    with path.open("w") as stream:
        for start in range(0, len(texts), per_line):
            outputs = [{"text": text, "finish_reason": "stop", "completion_tokens": 1}
                       for text in texts[start:start + per_line]]
            stream.write(json.dumps({"id": str(start // per_line), "type": "completion", "outputs": outputs,
                                     "usage": {}, "model": "corpus", "metadata": None, "error": None}) + "\n")


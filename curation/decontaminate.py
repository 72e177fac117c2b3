"""Benchmark decontamination by n-gram overlap, as StarCoder2's self-align and Magicoder do.

Each benchmark problem gives up to two documents: its text with its reference solution (``prompt`` +
``canonical_solution`` in HumanEval, HumanEval-X and MultiPL-E files, with HumanEval-X's ``declaration`` where
the prompt lacks it, as its Rust prompts do; ``text`` + ``code`` in MBPP's), and the
solution alone when it is long enough to be told apart from common code (at least ``MIN_SOLUTION_NGRAMS``
distinct n-grams). A sample is contaminated when it holds at least ``threshold`` of one document's distinct
token n-grams (tokens: words and single punctuation characters).
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import dataclass

from dscbatch.core.errors import StorageError
from dscbatch.curation.config import CurateError, Decontaminate
from dscbatch.curation.text import ngrams, tokens
from dscbatch.jobs import objectstore
from dscbatch.jobs.humaneval_data import humaneval_path

MIN_SOLUTION_NGRAMS = 10
TEXT_FIELDS = ("prompt", "text")
SOLUTION_FIELDS = ("canonical_solution", "code")
ID_FIELDS = ("task_id", "name")


@dataclass(frozen=True)
class Document:
    problem: str  # e.g. HumanEval/0
    kind: str  # "problem" (text and solution) or "solution"
    size: int  # distinct n-grams


def _problems(url: str) -> list[tuple[str, str, str]]:
    """(id, text, solution) of each problem of a JSONL (or .jsonl.gz) benchmark file."""
    problems = []
    with objectstore.open_read(url) as raw:
        data = raw.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text = next(record[field] for field in TEXT_FIELDS if isinstance(record.get(field), str))
        except (ValueError, StopIteration, TypeError, AttributeError):
            raise CurateError(f"decontaminate: {url}: line {number} is not a benchmark problem (JSON with a "
                              f"prompt or text field)") from None
        declaration = record.get("declaration")
        if isinstance(declaration, str) and declaration.strip() not in text:  # HumanEval-X's Rust prompts
            text += declaration
        solution = next((record[field] for field in SOLUTION_FIELDS if isinstance(record.get(field), str)), "")
        name = next((str(record[field]) for field in ID_FIELDS if field in record), f"{url}:{number}")
        problems.append((name, text, solution))
    return problems


class Index:
    """Every benchmark document's n-grams, to look samples up in."""

    def __init__(self, step: Decontaminate) -> None:
        self.step = step
        self.documents: list[Document] = []
        self.postings: dict[int, list[int]] = {}
        for benchmark in step.benchmark:
            url = humaneval_path("benchmark=PATH") if benchmark == "humaneval" else benchmark
            try:
                problems = _problems(url)
            except StorageError as error:
                raise CurateError(f"decontaminate: {error}") from None
            for name, text, solution in problems:
                self._add(name, "problem", text + solution)
                if len(set(ngrams(tokens(solution), step.ngram))) >= MIN_SOLUTION_NGRAMS:
                    self._add(name, "solution", solution)

    def _add(self, problem: str, kind: str, text: str) -> None:
        grams = {hash(gram) for gram in ngrams(tokens(text), self.step.ngram)}
        if not grams:
            return
        number = len(self.documents)
        self.documents.append(Document(problem, kind, len(grams)))
        for gram in grams:
            self.postings.setdefault(gram, []).append(number)

    def match(self, text: str) -> str | None:
        """Why ``text`` is contaminated (the problem it holds most of), or None when it is not."""
        hits: Counter[int] = Counter()
        for gram in {hash(gram) for gram in ngrams(tokens(text), self.step.ngram)}:
            hits.update(self.postings.get(gram, ()))
        best: tuple[float, Document] | None = None
        for number, count in hits.items():
            document = self.documents[number]
            share = count / document.size
            if share >= self.step.threshold and (best is None or share > best[0]):
                best = (share, document)
        if best is None:
            return None
        share, document = best
        return (f"holds {share:.0%} of the {self.step.ngram}-grams of {document.problem}'s "
                f"{'text and solution' if document.kind == 'problem' else 'solution'}")

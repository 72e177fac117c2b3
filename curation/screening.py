"""Pass 1 of a curate run: the per-sample filters, and what the dedup steps keep of each surviving sample.

A :class:`Screening` takes samples in input order: it counts what each filter removed (with examples), and
keeps, for each survivor, its position, its exact-dedup digest and its MinHash signature. Screenings of
consecutive parts of an input merge into the screening of the whole (``merge``), and travel as bytes
(``dump``/``load``), so that parts can be screened elsewhere (executor/curate_tasks.py) and merged in one
place.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dscbatch.curation import syntax
from dscbatch.curation.config import Plan
from dscbatch.curation.decontaminate import Index
from dscbatch.curation.minhash import Signatures
from dscbatch.curation.quality import rejection
from dscbatch.curation.source import Sample
from dscbatch.curation.text import code_of, normalized

FILTER_STEPS = ("execution", "syntax", "quality", "decontaminate")
EXAMPLES = 5
EXAMPLE_CHARS = 300
DIGEST_BYTES = 16


@dataclass
class StepReport:
    step: str
    params: dict[str, Any]
    samples_in: int = 0
    samples_out: int = 0
    clusters: int | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)

    def removed(self, sample: Sample, reason: str, kept: Sample | None = None) -> None:
        if len(self.examples) < EXAMPLES:
            example = {"id": sample.id, "output": sample.output, "reason": reason,
                       "text": sample.text[:EXAMPLE_CHARS]}
            if kept is not None:
                example["kept"] = {"id": kept.id, "output": kept.output}
            self.examples.append(example)

    def as_dict(self) -> dict[str, Any]:
        found = {"step": self.step, "params": self.params, "in": self.samples_in, "out": self.samples_out,
                 "removed": self.samples_in - self.samples_out, "examples": self.examples}
        if self.clusters is not None:
            found["clusters"] = self.clusters
        return found

    def add(self, other: StepReport) -> None:
        self.samples_in += other.samples_in
        self.samples_out += other.samples_out
        self.examples = (self.examples + other.examples)[:EXAMPLES]


class Filters:
    """The per-sample steps of a plan, in their fixed order; building it refuses an unknown language or an
    unreadable benchmark."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.language = syntax.canonical(plan.syntax.language) if plan.syntax is not None else ""
        self.index = Index(plan.decontaminate) if plan.decontaminate is not None else None
        self.steps = [name for name in FILTER_STEPS if getattr(plan, name) is not None]

    def rejection(self, step: str, sample: Sample) -> str | None:
        plan = self.plan
        if step == "execution":
            return None if sample.verdict == "passed" else f"verdict {sample.verdict or 'missing (not verified)'}"
        if step == "syntax":
            assert plan.syntax is not None
            ok = syntax.parses(code_of(sample.text, plan.syntax.target), self.language)
            return None if ok else f"does not parse as {self.language}"
        if step == "quality":
            assert plan.quality is not None
            return rejection(code_of(sample.text, plan.quality.target), plan.quality)
        assert self.index is not None
        return self.index.match(sample.text)


def scope_key(scope: str, sample: Sample) -> bytes:
    return sample.id.encode("utf-8", "surrogatepass") + b"\0" if scope == "prompt" else b""


class Screening:
    def __init__(self, plan: Plan, filters: Filters | None = None) -> None:
        self.plan = plan
        self.filters = filters
        self.reports = {name: StepReport(name, getattr(plan, name).model_dump())
                        for name in FILTER_STEPS if getattr(plan, name) is not None}
        self.total = 0
        self.passed = bytearray()  # per sample: its verdict is passed
        self.survivors: list[int] = []
        self.digests: list[bytes] = []  # per survivor, with exact dedup
        self.signatures = Signatures(plan.near) if plan.near is not None else None

    def add(self, sample: Sample) -> None:
        """Screen the next sample (its ``number`` is its position in this screening's part)."""
        assert self.filters is not None
        self.total += 1
        self.passed.append(sample.verdict == "passed")
        for step in self.filters.steps:
            report = self.reports[step]
            report.samples_in += 1
            reason = self.filters.rejection(step, sample)
            if reason is not None:
                report.removed(sample, reason)
                return
            report.samples_out += 1
        self.survivors.append(sample.number)
        if self.plan.exact is not None:
            text = scope_key(self.plan.exact.scope, sample) + normalized(sample.text).encode("utf-8", "surrogatepass")
            self.digests.append(hashlib.blake2b(text, digest_size=DIGEST_BYTES).digest())
        if self.signatures is not None and self.plan.near is not None:
            scope = hashlib.blake2b(scope_key(self.plan.near.scope, sample), digest_size=8).digest()
            self.signatures.add(sample.number, int.from_bytes(scope, "little"), sample.text)

    def merge(self, part: Screening) -> None:
        """Append the screening of the part of the input that follows this one's."""
        offset = self.total
        self.total += part.total
        self.passed += part.passed
        self.survivors += [number + offset for number in part.survivors]
        self.digests += part.digests
        for name, report in part.reports.items():
            self.reports[name].add(report)
        if self.signatures is not None and part.signatures is not None:
            self.signatures.extend(part.signatures, offset)

    def dump(self) -> bytes:
        arrays: dict[str, np.ndarray] = {
            "total": np.asarray([self.total], dtype=np.int64),
            "passed": np.frombuffer(bytes(self.passed), dtype=np.uint8),
            "survivors": np.asarray(self.survivors, dtype=np.int64),
            "digests": np.frombuffer(b"".join(self.digests), dtype=np.uint8),
            "reports": np.frombuffer(json.dumps([report.as_dict() for report in self.reports.values()]).encode(),
                                     dtype=np.uint8),
        }
        if self.signatures is not None:
            arrays.update(numbers=np.asarray(self.signatures.numbers, dtype=np.int64),
                          scopes=np.asarray(self.signatures.scopes, dtype=np.uint64),
                          signatures=self.signatures.matrix())
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        return buffer.getvalue()

    @classmethod
    def load(cls, plan: Plan, data: bytes) -> Screening:
        arrays = np.load(io.BytesIO(data))
        screening = cls(plan)
        screening.total = int(arrays["total"][0])
        screening.passed = bytearray(arrays["passed"].tobytes())
        screening.survivors = arrays["survivors"].tolist()
        digests = arrays["digests"].tobytes()
        screening.digests = [digests[start:start + DIGEST_BYTES] for start in range(0, len(digests), DIGEST_BYTES)]
        for found in json.loads(arrays["reports"].tobytes()):
            report = screening.reports[found["step"]]
            report.samples_in, report.samples_out, report.examples = found["in"], found["out"], found["examples"]
        if screening.signatures is not None:
            screening.signatures.load(arrays["numbers"], arrays["scopes"], arrays["signatures"])
        return screening

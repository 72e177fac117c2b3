"""One curate run: read the samples twice, write the kept ones once, whole or not at all.

Pass 1 streams the input through the per-sample filters (execution, syntax, quality, decontaminate), keeps a
normalized-text digest (exact) and a MinHash signature (near) of each survivor, and counts what each step
removed. The dedup groups are formed once every survivor is known, and each keeps one sample by the plan's
rule. Pass 2 streams the input again and writes the kept samples, in input order, through
``objectstore.write_atomic``: a run that is killed leaves nothing at the output, and running it again writes
the same file (every step is deterministic).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dscbatch.curation import syntax
from dscbatch.curation.clusters import Groups, keepers
from dscbatch.curation.config import CurateError, Plan
from dscbatch.curation.decontaminate import Index
from dscbatch.curation.export import Format, record, write_jsonl, write_parquet
from dscbatch.curation.minhash import Signatures
from dscbatch.curation.quality import rejection
from dscbatch.curation.source import Sample, Source
from dscbatch.curation.text import code_of, normalized
from dscbatch.jobs import objectstore
from dscbatch.jobs.fileformat import is_parquet

EXAMPLES = 5
EXAMPLE_CHARS = 300
PROGRESS_EVERY = 5000

Progress = Callable[[str, int], None]


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


class _Filters:
    """The per-sample steps of a plan, in their fixed order."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.language = syntax.canonical(plan.syntax.language) if plan.syntax is not None else ""
        self.index = Index(plan.decontaminate) if plan.decontaminate is not None else None

    def steps(self) -> list[str]:
        return [name for name in ("execution", "syntax", "quality", "decontaminate") if getattr(self.plan, name)]

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


def _scope_key(scope: str, sample: Sample) -> bytes:
    return sample.id.encode("utf-8", "surrogatepass") + b"\0" if scope == "prompt" else b""


@dataclass
class Outcome:
    samples_in: int
    samples_out: int
    steps: list[StepReport]
    seconds: float
    output: str

    def as_dict(self) -> dict[str, Any]:
        return {"output": self.output, "samples_in": self.samples_in, "samples_out": self.samples_out,
                "seconds": round(self.seconds, 3), "steps": [step.as_dict() for step in self.steps]}

    def table(self) -> str:
        lines = [f"{'step':<14}{'in':>10}{'out':>10}{'removed':>10}  clusters"]
        for step in self.steps:
            clusters = "" if step.clusters is None else str(step.clusters)
            lines.append(f"{step.step:<14}{step.samples_in:>10}{step.samples_out:>10}"
                         f"{step.samples_in - step.samples_out:>10}  {clusters}")
        return "\n".join(lines)


def curate(source: Source, plan: Plan, output: str, form: Format, progress: Progress | None = None) -> Outcome:
    """Apply ``plan`` to ``source`` and write the kept samples to ``output``."""
    started = time.monotonic()
    filters = _Filters(plan)  # refuses an unknown language or benchmark before anything is read
    reports = {name: StepReport(name, getattr(plan, name).model_dump()) for name in plan.names()}
    passed: list[bool] = []
    survivors: list[int] = []
    exact_first: dict[bytes, int] = {}
    exact_pairs: list[tuple[int, int]] = []
    signatures = Signatures(plan.near) if plan.near is not None else None
    total = 0
    for sample in source.read():
        total += 1
        passed.append(sample.verdict == "passed")
        if progress is not None and total % PROGRESS_EVERY == 0:
            progress("read", total)
        if not _survives(filters, reports, sample):
            continue
        survivors.append(sample.number)
        if plan.exact is not None:
            digest = hashlib.blake2b(_scope_key(plan.exact.scope, sample) + normalized(sample.text).encode(
                "utf-8", "surrogatepass"), digest_size=16).digest()
            first = exact_first.setdefault(digest, sample.number)
            if first != sample.number:
                exact_pairs.append((first, sample.number))
        if signatures is not None:
            scope = int.from_bytes(hashlib.blake2b(_scope_key(plan.near.scope, sample), digest_size=8).digest(),
                                   "little") if plan.near is not None else 0
            signatures.add(sample.number, scope, sample.text)
    if progress is not None:
        progress("read", total)
    groups = Groups(total)
    if plan.exact is not None:
        for first, later in exact_pairs:
            groups.union(first, later)
        _dedup_report(reports["exact"], groups, survivors, len(survivors))
    if signatures is not None:
        exact_roots = {survivor: groups.find(survivor) for survivor in survivors} if plan.exact else None
        signatures.cluster(groups)
        before = reports["exact"].samples_out if "exact" in reports else len(survivors)
        _dedup_report(reports["near"], groups, survivors, before, exact_roots)
    kept = keepers(groups, survivors, passed, plan.keep) if plan.exact or plan.near else set(survivors)
    removals = _Removals(groups, reports, set(survivors) - kept)
    written = _write(source, output, form, kept, removals, progress)
    steps = [reports[name] for name in plan.names()]
    return Outcome(total, written, steps, time.monotonic() - started, output)


def _survives(filters: _Filters, reports: dict[str, StepReport], sample: Sample) -> bool:
    for step in filters.steps():
        report = reports[step]
        report.samples_in += 1
        reason = filters.rejection(step, sample)
        if reason is not None:
            report.removed(sample, reason)
            return False
        report.samples_out += 1
    return True


def _dedup_report(report: StepReport, groups: Groups, survivors: list[int], samples_in: int,
                  earlier: dict[int, int] | None = None) -> None:
    """Counts for a dedup step; its clusters are the groups it made, not those of an ``earlier`` step (the
    survivors' groups before it ran) that it left alone."""
    clustered = groups.members(survivors)
    report.samples_in = samples_in
    report.samples_out = len(survivors) - sum(len(members) - 1 for members in clustered.values())
    report.clusters = sum(earlier is None or len({earlier[member] for member in members}) > 1
                          for members in clustered.values())


@dataclass
class _Removals:
    """What pass 2 needs to give the dedup steps' reports examples of removed samples."""

    groups: Groups
    reports: dict[str, StepReport]
    duplicates: set[int]  # samples a dedup step removed

    waiting: list[Sample] = field(default_factory=list)  # removed before their group's keeper was read

    def note(self, sample: Sample, kept: dict[int, Sample]) -> None:
        if sample.number not in self.duplicates:
            return
        keeper = kept.get(self.groups.find(sample.number))
        if keeper is not None:
            same = "exact" in self.reports and normalized(sample.text) == normalized(keeper.text)
            step = "exact" if same else "near"
            if step in self.reports:
                self.reports[step].removed(sample, f"{step} duplicate", keeper)
        elif len(self.waiting) < 2 * EXAMPLES:
            self.waiting.append(sample)

    def keeper(self, sample: Sample, kept: dict[int, Sample]) -> None:
        """``sample`` is its group's keeper: note the removed samples read before it."""
        root = self.groups.find(sample.number)
        kept[root] = sample
        for early in [each for each in self.waiting if self.groups.find(each.number) == root]:
            self.waiting.remove(early)
            self.note(early, kept)


def _kept_samples(source: Source, kept: set[int], removals: _Removals,
                  progress: Progress | None) -> Iterator[Sample]:
    keepers_seen: dict[int, Sample] = {}
    seen = 0
    for sample in source.read():
        seen += 1
        if sample.number in kept:
            removals.keeper(sample, keepers_seen)
            if progress is not None and len(keepers_seen) % PROGRESS_EVERY == 0:
                progress("written", len(keepers_seen))
            yield sample
        else:
            removals.note(sample, keepers_seen)
    if seen != len(removals.groups.parent):
        raise CurateError(f"{source.name} changed while it was curated ({len(removals.groups.parent)} samples, "
                          f"then {seen})")


def _write(source: Source, output: str, form: Format, kept: set[int], removals: _Removals,
           progress: Progress | None) -> int:
    records = (record(sample, source, form) for sample in _kept_samples(source, kept, removals, progress))
    with objectstore.write_atomic(output) as stream:
        if is_parquet(output):
            return write_parquet(stream, records, form)
        return write_jsonl(stream, records)

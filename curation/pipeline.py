"""One curate run: read the samples twice, write the kept ones once, whole or not at all.

Pass 1 (``screening.py``) streams the input through the per-sample filters (execution, syntax, quality,
decontaminate), keeps a normalized-text digest (exact) and a MinHash signature (near) of each survivor, and
counts what each step removed; it runs here, or in parts on the executor pool (``distributed.py``). The
dedup groups are formed once every survivor is known, and each keeps one sample by the plan's rule. Pass 2
streams the input again and writes the kept samples, in input order, through
``objectstore.write_atomic``: a run that is killed leaves nothing at the output, and running it again writes
the same file (every step is deterministic).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dscbatch.curation.clusters import Groups, keepers
from dscbatch.curation.config import CurateError, Plan
from dscbatch.curation.export import Format, record, write_jsonl, write_parquet
from dscbatch.curation.screening import EXAMPLES, Filters, Screening, StepReport
from dscbatch.curation.source import Sample, Source
from dscbatch.curation.text import normalized
from dscbatch.jobs import objectstore
from dscbatch.jobs.fileformat import is_parquet

PROGRESS_EVERY = 5000

Progress = Callable[[str, int], None]


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


def screen(source: Source, plan: Plan, progress: Progress | None = None) -> Screening:
    """Pass 1 over the whole input, here."""
    screening = Screening(plan, Filters(plan))
    for sample in source.read():
        screening.add(sample)
        if progress is not None and screening.total % PROGRESS_EVERY == 0:
            progress("read", screening.total)
    if progress is not None:
        progress("read", screening.total)
    return screening


def curate(source: Source, plan: Plan, output: str, form: Format, progress: Progress | None = None,
           screening: Screening | None = None) -> Outcome:
    """Apply ``plan`` to ``source`` and write the kept samples to ``output``; pass 1 runs here unless its
    ``screening`` is given (merged from parts screened elsewhere)."""
    started = time.monotonic()
    if screening is None:
        screening = screen(source, plan, progress)
    reports: dict[str, StepReport] = dict(screening.reports)
    reports.update({name: StepReport(name, getattr(plan, name).model_dump())
                    for name in ("exact", "near") if getattr(plan, name) is not None})
    survivors = screening.survivors
    groups = Groups(screening.total)
    if plan.exact is not None:
        exact_first: dict[bytes, int] = {}
        for number, digest in zip(survivors, screening.digests, strict=True):
            groups.union(exact_first.setdefault(digest, number), number)
        _dedup_report(reports["exact"], groups, survivors, len(survivors))
    if screening.signatures is not None:
        exact_roots = {survivor: groups.find(survivor) for survivor in survivors} if plan.exact else None
        screening.signatures.cluster(groups)
        before = reports["exact"].samples_out if "exact" in reports else len(survivors)
        _dedup_report(reports["near"], groups, survivors, before, exact_roots)
    passed = [bool(flag) for flag in screening.passed]
    kept = keepers(groups, survivors, passed, plan.keep) if plan.exact or plan.near else set(survivors)
    removals = _Removals(groups, reports, set(survivors) - kept)
    written = _write(source, output, form, kept, removals, progress)
    steps = [reports[name] for name in plan.names()]
    return Outcome(screening.total, written, steps, time.monotonic() - started, output)


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

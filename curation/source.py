"""The samples a curate run reads: every output of every result line of a finished job or a results file.

A results file is what ``dscbatch results`` writes: JSONL (native or OpenAI batch output lines) or Parquet
(its columns), at a local path or fsspec URL. Each output of a line is one :class:`Sample`; a line whose
request failed has no outputs, so it yields none.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dscbatch.curation.config import CurateError
from dscbatch.jobs import objectstore
from dscbatch.jobs.fileformat import is_parquet


@dataclass(frozen=True)
class Sample:
    """One generated output, with where it came from."""

    number: int  # its position among the input's samples, from 0
    id: str  # the result line's id (custom_id for OpenAI lines): one prompt
    output: int  # which of the line's outputs
    text: str
    model: str | None
    instruction: str  # metadata.instruction, else the echoed prompt, else ""
    verdict: str | None  # its verification status (passed, failed, ...), None when unverified
    metadata: Any


def _record_samples(record: dict[str, Any]) -> list[tuple[str, str | None, str]] | None:
    """(text, model, instruction) of each output; None when the record is not a result line."""
    if "outputs" in record and isinstance(record["outputs"], list):
        texts = [output.get("text") if isinstance(output, dict) else None for output in record["outputs"]]
        model = record.get("model")
        prompt = record.get("prompt")
    elif "custom_id" in record and "response" in record:
        body = (record["response"] or {}).get("body") or {}
        texts = [choice["message"].get("content") if "message" in choice else choice.get("text")
                 for choice in body.get("choices", [])]
        model = body.get("model")
        prompt = body.get("prompt")
    else:
        return None
    if any(not isinstance(text, str) for text in texts):
        return None
    metadata = record.get("metadata")
    instruction = metadata.get("instruction") if isinstance(metadata, dict) else None
    if not isinstance(instruction, str):
        instruction = prompt if isinstance(prompt, str) else ""
    return [(str(text), model if isinstance(model, str) else None, instruction) for text in texts]


def _verdicts(record: dict[str, Any]) -> list[str | None]:
    verification = record.get("verification")
    if not isinstance(verification, dict):
        return []
    return [verdict.get("status") for verdict in verification.get("verdicts", [])]


def samples_of(records: Iterator[tuple[int, dict[str, Any]]], where: str) -> Iterator[Sample]:
    """The samples of result records (line number, record), refusing the first record that is not one."""
    number = 0
    for line, record in records:
        outputs = _record_samples(record) if isinstance(record, dict) else None
        if outputs is None:
            raise CurateError(f"{where}: line {line} is not a dscbatch result line (no outputs or response): "
                              "curate reads what `dscbatch results` writes")
        metadata = record.get("metadata")
        verdicts = _verdicts(record)
        for index, (text, model, instruction) in enumerate(outputs):
            verdict = verdicts[index] if index < len(verdicts) else None
            yield Sample(number, str(record.get("id") if "outputs" in record else record["custom_id"]), index, text,
                         model, instruction, verdict, metadata)
            number += 1


def json_records(url: str, lines: Iterable[bytes], first_line: int = 1) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, parsed line) of each non-blank JSONL line of ``url``; a line that is not JSON refuses it."""
    for line, raw in enumerate(lines, start=first_line):
        if not raw.strip():
            continue
        try:
            yield line, json.loads(raw)
        except ValueError:
            raise CurateError(f"{url}: line {line} is not JSON: curate reads what `dscbatch results` "
                              "writes") from None


def _jsonl_records(url: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with objectstore.open_read(url) as stream:
        yield from json_records(url, stream)


def _parquet_records(url: str) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa

    from dscbatch.jobs import parquet

    try:
        yield from enumerate(parquet.read_records(url), start=1)
    except (pa.ArrowException, OSError) as error:
        raise CurateError(f"{url}: not a Parquet results file: {error}") from None
    except KeyError as error:
        raise CurateError(f"{url}: not a dscbatch results file (no column {error})") from None


@dataclass(frozen=True)
class Source:
    """Where the samples come from: ``read()`` streams them again on every call (a run reads twice)."""

    name: str
    job: str | None
    params: dict[str, Any] | None  # the job's sampling defaults, when the input is a job
    records: Callable[[], Iterator[tuple[int, dict[str, Any]]]]

    def read(self) -> Iterator[Sample]:
        return samples_of(self.records(), self.name)


def file_source(url: str) -> Source:
    reader = _parquet_records if is_parquet(url) else _jsonl_records
    return Source(url, None, None, lambda: reader(url))


def job_source(store: Any, job_id: str) -> Source:
    """A finished job's results (``store`` is a :class:`dscbatch.jobs.store.JobStore`)."""
    from dscbatch.jobs.output import result_lines

    status = store.status(job_id)
    lines: Iterator[str] | None = result_lines(store, status)  # refuses a job that has not settled

    def records() -> Iterator[tuple[int, dict[str, Any]]]:
        nonlocal lines
        current, lines = lines, None
        for number, line in enumerate(current if current is not None else result_lines(store, status), start=1):
            yield number, json.loads(line)

    return Source(f"job {job_id}", job_id, status.options.get("defaults"), records)

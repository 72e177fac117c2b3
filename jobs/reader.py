"""Streaming reader for job files: one pass, memory bounded, every problem named ``FILE:LINE: field: message``.

The reader never raises on bad content: each physical line becomes a :class:`Line` holding either a request
or its problems, so that strict mode can refuse the whole file and ``--skip-invalid`` can turn bad lines into
error results. Only an unreadable file, an empty file or a caller's strict check raise.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dscbatch.core.errors import InvalidInputError, StorageError
from dscbatch.jobs import objectstore
from dscbatch.jobs.byteranges import range_lines, read_physical_line
from dscbatch.jobs.fileformat import is_parquet
from dscbatch.jobs.requests import (
    MODEL_BY_TYPE,
    REQUEST_TYPES,
    TYPE_BY_FIELD,
    OpenAIBatchLine,
    Request,
    request_from_openai,
)

DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024
MAX_REPORTED_PROBLEMS = 20
OPENAI_KEYS = frozenset({"custom_id", "method", "url", "body"})


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


@dataclass(frozen=True)
class Line:
    """One non-blank line of a job file: a request, or the problems that stop it from being one."""

    number: int
    request: Request | None
    problems: tuple[Problem, ...]
    # The id an error record for this line carries: the line's own id where it can be read, else its number.
    id: str
    openai: bool = False
    model: str | None = None  # an OpenAI line's body.model
    more: tuple[Request, ...] = ()  # the line's other prompts (an OpenAI body's ``prompt`` list), after request

    @property
    def requests(self) -> tuple[Request, ...]:
        """Every request of the line, one per prompt (none for an invalid line)."""
        return () if self.request is None else (self.request, *self.more)


@dataclass(frozen=True)
class FileCheck:
    requests: int
    invalid_lines: int
    problems: list[Problem]
    problem_count: int
    sha256: str


class _SeenIds:
    """Ids seen so far, kept in a temporary SQLite file so memory does not grow with the job."""

    def __init__(self) -> None:
        handle, self._path = tempfile.mkstemp(prefix="dscbatch-ids-", suffix=".sqlite")
        os.close(handle)
        self._db = sqlite3.connect(self._path)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY, line INTEGER) WITHOUT ROWID")

    def first_line(self, request_id: str, line: int) -> int | None:
        """Record ``request_id``; return the line that used it first if it was seen before."""
        try:
            self._db.execute("INSERT INTO ids VALUES (?, ?)", (request_id, line))
            return None
        except sqlite3.IntegrityError:
            row = self._db.execute("SELECT line FROM ids WHERE id = ?", (request_id,)).fetchone()
            return int(row[0])

    def close(self) -> None:
        self._db.close()
        os.unlink(self._path)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _field_of(loc: tuple[int | str, ...], prefix: str = "") -> str:
    return prefix + ".".join(str(part) for part in loc) if loc else (prefix.rstrip(".") or "line")


def _message_of(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required field is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


class _LineParser:
    def __init__(self, path: str) -> None:
        self.path = path

    def problem(self, line: int, field: str, message: str) -> Problem:
        return Problem(self.path, line, field, message)

    def from_validation(self, line: int, error: ValidationError, prefix: str = "") -> tuple[Problem, ...]:
        return tuple(self.problem(line, _field_of(e["loc"], prefix), _message_of(e)) for e in error.errors())

    def parse(self, number: int, text: str) -> Line:
        value, problem = _decoded(text)
        if problem is not None:
            return Line(number, None, (self.problem(number, "json", problem),), str(number))
        return self.parse_value(number, value)

    def parse_value(self, number: int, value: Any) -> Line:
        """A line from its decoded JSON value (or a Parquet row)."""
        if (message := _not_an_object(value)) is not None:
            return Line(number, None, (self.problem(number, "json", message),), str(number))
        if OPENAI_KEYS & value.keys():
            return self._parse_openai(number, value)
        return self._parse_native(number, value)

    def _parse_openai(self, number: int, value: dict[str, Any]) -> Line:
        line_id = value.get("custom_id") if isinstance(value.get("custom_id"), str) else str(number)
        try:
            batch_line = OpenAIBatchLine.model_validate(value)
        except ValidationError as error:
            return Line(number, None, self.from_validation(number, error), str(line_id), openai=True)
        model = batch_line.body.get("model")
        model = model if isinstance(model, str) else None
        try:
            first, *more = request_from_openai(batch_line)
        except ValidationError as error:
            return Line(number, None, self.from_validation(number, error, "body."), batch_line.custom_id, True, model)
        return Line(number, first, (), first.id, openai=True, model=model, more=tuple(more))

    def _parse_native(self, number: int, value: dict[str, Any]) -> Line:
        value.setdefault("id", str(number))
        line_id = value["id"] if isinstance(value["id"], str) and value["id"] else str(number)
        kind = value.get("type")
        if kind is None:
            kinds = sorted({TYPE_BY_FIELD[key] for key in value if key in TYPE_BY_FIELD})
            if len(kinds) != 1:
                reason = "no field tells which request this is" if not kinds else (
                    f"the fields fit several types ({', '.join(kinds)})")
                message = f"{reason}: add \"type\", one of {', '.join(REQUEST_TYPES)}"
                return Line(number, None, (self.problem(number, "type", message),), line_id)
            kind = kinds[0]
        if not isinstance(kind, str) or kind not in MODEL_BY_TYPE:
            message = f"unknown type {json.dumps(kind)}: expected one of {', '.join(REQUEST_TYPES)}"
            return Line(number, None, (self.problem(number, "type", message),), line_id)
        try:
            request = MODEL_BY_TYPE[kind].model_validate({**value, "type": kind})
        except ValidationError as error:
            return Line(number, None, self.from_validation(number, error), line_id)
        return Line(number, request, (), line_id)  # type: ignore[arg-type]


def _decoded(text: str) -> tuple[Any, str | None]:
    """A line's JSON value, or why it is not JSON."""
    try:
        return json.loads(text, parse_constant=_reject_constant), None
    except (ValueError, RecursionError) as error:
        detail = error.msg if isinstance(error, json.JSONDecodeError) else str(error) or "nested too deeply"
        where = f" (column {error.colno})" if isinstance(error, json.JSONDecodeError) else ""
        return None, f"invalid JSON: {detail}{where}"


def _not_an_object(value: Any) -> str | None:
    if isinstance(value, dict):
        return None
    return f"a line must be a JSON object, not {type(value).__name__ if value is not None else 'null'}"


def json_problem(text: str) -> str | None:
    """Why a line's text is not one JSON object, as the reader words it (its ``json`` problem), or None; the
    request in it is not validated."""
    value, problem = _decoded(text)
    return problem if problem is not None else _not_an_object(value)


def parse_line(number: int, text: str, path: str = "") -> Line:
    """One line's request or its problems, as ``read_lines`` reads it (duplicate ids aside)."""
    return _LineParser(path).parse(number, text)


def _raw_lines(url: str, max_line_bytes: int,
               on_bytes: Callable[[bytes], None] | None = None) -> Iterator[tuple[int, bytes | None]]:
    """Physical lines without their ending; ``None`` stands for a line over the size limit. ``on_bytes``
    sees every byte of the file, in order."""
    with objectstore.open_read(url) as stream:
        number = 0
        while (line := read_physical_line(stream, number == 0, max_line_bytes, on_bytes)) is not None:
            number += 1
            yield number, line[0]


def _jsonl_lines(path: str, parser: _LineParser, max_line_bytes: int,
                 on_bytes: Callable[[bytes], None] | None) -> Iterator[Line]:
    return _parsed(_raw_lines(path, max_line_bytes, on_bytes), parser, max_line_bytes)


def _parsed(raw_lines: Iterable[tuple[int, bytes | None]], parser: _LineParser, max_line_bytes: int) -> Iterator[Line]:
    """Numbered physical lines (``None``: over the limit) as ``Line``s, blank lines left out."""
    for number, body in raw_lines:
        if body is None:
            message = f"line is longer than the limit of {max_line_bytes} bytes (--max-line-bytes)"
            yield Line(number, None, (parser.problem(number, "line", message),), str(number))
            continue
        if not body.strip():
            continue
        nul = body.find(b"\x00")
        if nul >= 0:
            message = f"NUL byte at byte {nul + 1}: the file is not JSON Lines text"
            yield Line(number, None, (parser.problem(number, "line", message),), str(number))
            continue
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as error:
            message = f"invalid UTF-8 at byte {error.start + 1}: the file must be UTF-8"
            yield Line(number, None, (parser.problem(number, "encoding", message),), str(number))
            continue
        yield parser.parse(number, text)


def _parquet_lines(url: str, parser: _LineParser) -> Iterator[Line]:
    from dscbatch.jobs import parquet  # pyarrow: only for Parquet files

    return (parser.parse_value(number, row) for number, row in parquet.read_rows(url))


def read_lines(path: str | Path, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
               on_bytes: Callable[[bytes], None] | None = None) -> Iterator[Line]:
    """Every non-blank line (or Parquet row) of ``path``, a path or fsspec URL, in order, valid or not;
    duplicate ids are problems of the later line. ``on_bytes`` sees the bytes of a JSONL file as read."""
    url = str(path)
    parser = _LineParser(url)
    lines = (_parquet_lines(url, parser) if is_parquet(url) else _jsonl_lines(url, parser, max_line_bytes, on_bytes))
    yield from _with_unique_ids(lines, parser)


def read_range_lines(path: str, start: int, end: int, first_line: int, *,
                     max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[Line]:
    """The non-blank lines of a JSONL file that start in the byte range ``[start, end)``
    (``byteranges.range_lines``), or the rows of a Parquet file's row groups ``[start, end)``
    (``parquet.plan_row_groups``), numbered from ``first_line`` as ``read_lines`` numbers them; duplicate ids are
    found within the range only (``rangeids``: across ranges)."""
    parser = _LineParser(path)
    if is_parquet(path):
        from dscbatch.jobs import parquet  # pyarrow: only for Parquet files

        rows = parquet.read_rows(path, (start, end), first_line)
        return _with_unique_ids((parser.parse_value(number, row) for number, row in rows), parser)
    raw = enumerate(range_lines(path, start, end, max_line_bytes), start=first_line)
    return _with_unique_ids(_parsed(raw, parser, max_line_bytes), parser)


def _with_unique_ids(lines: Iterable[Line], parser: _LineParser) -> Iterator[Line]:
    seen = _SeenIds()
    try:
        for line in lines:
            first = seen.first_line(line.id, line.number)
            if first is not None:
                message = f"duplicate id {json.dumps(line.id)} (first used on line {first})"
                problem = parser.problem(line.number, "custom_id" if line.openai else "id", message)
                line = Line(line.number, None, (*line.problems, problem), line.id, line.openai)
            yield line
    finally:
        seen.close()


def file_digest(url: str) -> str:
    """The SHA-256 of the file's bytes (hex)."""
    digest = hashlib.sha256()
    with objectstore.open_read(url) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def require_input(path: str | Path) -> None:
    """Refuse an input that cannot be read, as one line (``StorageError``), before anything else is tried."""
    url = str(path)
    if objectstore.is_local(url):
        if not Path(url.removeprefix("file://")).is_file():
            raise StorageError(f"{url}: no such file")
        return
    with objectstore.open_read(url) as stream:
        stream.read(1)


def check_file(path: str | Path, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
               on_line: Callable[[Line], None] | None = None) -> FileCheck:
    """Validate the whole file in one streaming pass; raise if it holds no line at all. ``on_line`` sees each
    line as read (a caller's own checks, in the same pass)."""
    require_input(path)
    digest = hashlib.sha256()
    requests = invalid = problem_count = 0
    problems: list[Problem] = []
    for line in read_lines(path, max_line_bytes=max_line_bytes, on_bytes=digest.update):
        if on_line is not None:
            on_line(line)
        if line.request is not None:
            requests += 1
            continue
        invalid += 1
        problem_count += len(line.problems)
        problems.extend(line.problems[: MAX_REPORTED_PROBLEMS - len(problems)])
    if requests + invalid == 0:
        raise InvalidInputError([f"{path}: the file holds no requests (it is empty or only blank lines)"], 1)
    sha256 = file_digest(str(path)) if is_parquet(str(path)) else digest.hexdigest()
    return FileCheck(requests, invalid, problems, problem_count, sha256)


def require_valid(check: FileCheck) -> None:
    """Strict mode: any invalid line refuses the whole file."""
    if check.invalid_lines:
        raise InvalidInputError([str(problem) for problem in check.problems], check.problem_count)

"""Parquet beside JSONL: job files whose columns are named like the JSONL fields, and results files.

Input: one row per request; a column per field (``id``, ``type``, ``prompt``, ``prefix``, ``suffix``,
``messages``, ``files``, ``target``, ``params``, ``metadata``, or OpenAI's ``custom_id``, ``method``, ``url``,
``body``). A null cell is an absent field, so one file can mix request types. The schema is checked before
any row is read: an unknown column or a column of the wrong type refuses the file as one line.

Output: the result records' fields as columns, in input order. ``metadata`` (any JSON object) and an OpenAI
response's ``body`` are JSON text, so that every job has one fixed schema; a job that mixes native and OpenAI
lines can only be written as JSONL.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dscbatch.core.errors import InputFormatError, StorageError
from dscbatch.jobs import objectstore

ROWS_PER_BATCH = 1024
ROWS_PER_WRITE = 8192

_Check = Callable[[pa.DataType], bool]
_STRING: tuple[str, _Check] = ("a string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t))
_LIST: tuple[str, _Check] = ("a list", lambda t: pa.types.is_list(t) or pa.types.is_large_list(t))
_STRUCT: tuple[str, _Check] = ("a struct", pa.types.is_struct)
INPUT_COLUMNS: dict[str, tuple[str, _Check]] = {
    **dict.fromkeys(("id", "type", "prompt", "prefix", "suffix", "custom_id", "method", "url"), _STRING),
    "messages": _LIST, "files": _LIST,
    **dict.fromkeys(("target", "params", "metadata", "body"), _STRUCT),
}

_ERROR = pa.struct([("code", pa.string()), ("message", pa.string())])
NATIVE_SCHEMA = pa.schema([
    ("id", pa.string()), ("type", pa.string()),
    ("outputs", pa.list_(pa.struct([("text", pa.string()), ("finish_reason", pa.string()),
                                    ("completion_tokens", pa.int64())]))),
    ("usage", pa.struct([("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
                         ("cached_prompt_tokens", pa.int64())])),
    ("model", pa.string()), ("metadata", pa.string()), ("error", _ERROR),
    ("prompt", pa.string()), ("prompt_token_ids", pa.list_(pa.int64())),
])
OPENAI_SCHEMA = pa.schema([
    ("id", pa.string()), ("custom_id", pa.string()),
    ("response", pa.struct([("status_code", pa.int64()), ("request_id", pa.string()), ("body", pa.string())])),
    ("error", _ERROR),
])


def _check_schema(url: str, schema: pa.Schema) -> None:
    for column in schema:
        if column.name not in INPUT_COLUMNS:
            known = ", ".join(INPUT_COLUMNS)
            raise InputFormatError(f"{url}: unknown column {column.name!r} (columns are named like the JSONL "
                                   f"fields: {known})")
        expected, check = INPUT_COLUMNS[column.name]
        if not (check(column.type) or pa.types.is_null(column.type)):
            raise InputFormatError(f"{url}: column {column.name!r} is {column.type}, expected {expected}")


def _without_nulls(value: Any) -> Any:
    """A null cell (or struct field) is an absent field."""
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def read_rows(url: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 1, the row as a JSONL line's object) for every row of the file."""
    with objectstore.open_read(url) as stream:
        try:
            file = pq.ParquetFile(stream)
        except (pa.ArrowException, OSError) as error:
            raise InputFormatError(f"{url}: not a Parquet file: {error}") from None
        _check_schema(url, file.schema_arrow)
        number = 0
        for batch in file.iter_batches(batch_size=ROWS_PER_BATCH):
            for row in batch.to_pylist():
                number += 1
                yield number, _without_nulls(row)


def _row(record: dict[str, Any], openai: bool) -> dict[str, Any]:
    if openai:
        response = record["response"]
        if response is not None:
            record["response"] = {**response, "body": json.dumps(response["body"], ensure_ascii=False)}
    elif record["metadata"] is not None:
        record["metadata"] = json.dumps(record["metadata"], ensure_ascii=False)
    return record


def write_lines(lines: Iterable[str], url: str) -> int:
    """Write result lines as a Parquet file at ``url``, whole or not at all; returns how many."""
    written = 0
    openai: bool | None = None
    with objectstore.write_atomic(url) as stream:
        writer: pq.ParquetWriter | None = None
        rows: list[dict[str, Any]] = []
        for line in lines:
            record = json.loads(line)
            kind = "custom_id" in record
            if openai is None:
                openai = kind
                writer = pq.ParquetWriter(stream, OPENAI_SCHEMA if openai else NATIVE_SCHEMA)
            elif kind != openai:
                raise StorageError(f"{url}: the job mixes native and OpenAI batch lines: write it as JSONL")
            rows.append(_row(record, openai))
            written += 1
            if len(rows) >= ROWS_PER_WRITE:
                assert writer is not None
                writer.write_table(pa.Table.from_pylist(rows, schema=writer.schema))
                rows = []
        if writer is None:
            writer = pq.ParquetWriter(stream, NATIVE_SCHEMA)
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=writer.schema))
        writer.close()
    return written

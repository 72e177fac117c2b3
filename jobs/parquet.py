"""Parquet beside JSONL: job files whose columns are named like the JSONL fields, and results files.

Input: one row per request; a column per field (``id``, ``type``, ``prompt``, ``prefix``, ``suffix``,
``messages``, ``files``, ``target``, ``params``, ``metadata``, or OpenAI's ``custom_id``, ``method``, ``url``,
``body``). A null cell is an absent field, so one file can mix request types. The schema is checked before
any row is read: an unknown column or a column of the wrong type refuses the file as one line.

Output: the result records' fields as columns, in input order, every field kept (outputs' ``logprobs`` too): a
field without a column is an error, never dropped. ``metadata``, ``verification`` (any JSON object) and an
OpenAI response's ``body`` are JSON text, so that every job has one fixed schema; :func:`read_records` gives the
JSONL records back. A job that mixes native and OpenAI lines can only be written as JSONL.
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
_TOP_LOGPROB = pa.struct([("token", pa.string()), ("logprob", pa.float64())])
_LOGPROB = pa.struct([("token", pa.string()), ("logprob", pa.float64()), ("top_logprobs", pa.list_(_TOP_LOGPROB))])
NATIVE_SCHEMA = pa.schema([
    ("id", pa.string()), ("type", pa.string()),
    ("outputs", pa.list_(pa.struct([("text", pa.string()), ("finish_reason", pa.string()),
                                    ("completion_tokens", pa.int64()), ("logprobs", pa.list_(_LOGPROB))]))),
    ("usage", pa.struct([("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
                         ("cached_prompt_tokens", pa.int64())])),
    ("model", pa.string()), ("metadata", pa.string()), ("error", _ERROR),
    ("prompt", pa.string()), ("prompt_token_ids", pa.list_(pa.int64())), ("verification", pa.string()),
])
OPENAI_SCHEMA = pa.schema([
    ("id", pa.string()), ("custom_id", pa.string()),
    ("response", pa.struct([("status_code", pa.int64()), ("request_id", pa.string()), ("body", pa.string())])),
    ("error", _ERROR), ("verification", pa.string()),
])
# Fields of any shape, written as JSON text so that every job has one fixed schema.
_JSON_FIELDS = {False: ("metadata", "verification"), True: ("verification",)}
# Fields a JSONL line has only sometimes: a null cell is an absent field when read back.
_OPTIONAL = {False: ("prompt", "prompt_token_ids", "verification"), True: ("verification",)}
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


def read_rows(url: str, row_groups: tuple[int, int] | None = None,
              first_number: int = 1) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, the row as a JSONL line's object) for every row of the file, numbered from 1; or of its row
    groups ``[start, end)`` only (a range of a job rendered on the cluster), numbered from ``first_number``."""
    with objectstore.open_read(url) as stream:
        file = _open(url, stream)
        groups = None if row_groups is None else list(range(*row_groups))
        if groups == []:
            return
        number = first_number - 1
        for batch in file.iter_batches(batch_size=ROWS_PER_BATCH, row_groups=groups):
            for row in batch.to_pylist():
                number += 1
                yield number, _without_nulls(row)


def plan_row_groups(url: str, range_bytes: int) -> list[tuple[int, int]]:
    """The file's row groups as ranges ``[start, end)`` of consecutive groups of at most ``range_bytes``
    (compressed; a larger group is a range of its own); reads the footer only. One empty range for a file
    without row groups."""
    ranges: list[tuple[int, int]] = []
    start = size = 0
    metadata = _metadata(url)
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        group_bytes = sum(row_group.column(column).total_compressed_size for column in range(row_group.num_columns))
        if group > start and size + group_bytes > range_bytes:
            ranges.append((start, group))
            start, size = group, 0
        size += group_bytes
    ranges.append((start, metadata.num_row_groups))
    return ranges


def count_rows(url: str, row_groups: tuple[int, int]) -> int:
    """The rows of the file's row groups ``[start, end)``, from its footer."""
    metadata = _metadata(url)
    return sum(metadata.row_group(group).num_rows for group in range(*row_groups))


def _metadata(url: str) -> pq.FileMetaData:
    with objectstore.open_read(url) as stream:
        return _open(url, stream).metadata


def _open(url: str, stream: Any) -> pq.ParquetFile:
    """The Parquet file on ``stream``, its schema checked."""
    try:
        file = pq.ParquetFile(stream)
    except (pa.ArrowException, OSError) as error:
        raise InputFormatError(f"{url}: not a Parquet file: {error}") from None
    _check_schema(url, file.schema_arrow)
    return file


def _unknown(value: Any, kind: pa.DataType, path: str) -> str | None:
    """The first field of ``value`` that ``kind`` has no column for (its path), if any."""
    if isinstance(value, dict) and pa.types.is_struct(kind):
        names = {kind.field(i).name: kind.field(i).type for i in range(kind.num_fields)}
        for key, item in value.items():
            if key not in names:
                return f"{path}.{key}".lstrip(".")
            if (found := _unknown(item, names[key], f"{path}.{key}")) is not None:
                return found
    elif isinstance(value, list) and pa.types.is_list(kind):
        for item in value:
            if (found := _unknown(item, kind.value_type, f"{path}[]")) is not None:
                return found
    return None


def _row(record: dict[str, Any], openai: bool, url: str, number: int) -> dict[str, Any]:
    if openai:
        response = record["response"]
        if response is not None:
            record["response"] = {**response, "body": json.dumps(response["body"], ensure_ascii=False)}
    for name in _JSON_FIELDS[openai]:
        if record.get(name) is not None:
            record[name] = json.dumps(record[name], ensure_ascii=False)
    schema = OPENAI_SCHEMA if openai else NATIVE_SCHEMA
    unknown = _unknown(record, pa.struct(list(schema)), "")
    if unknown is not None:  # never dropped without a word: the writer must learn the field first
        raise StorageError(f"{url}: result line {number} has a field Parquet results have no column for: {unknown} "
                           "(write it as JSONL)")
    return record


def _table(rows: list[dict[str, Any]], schema: pa.Schema, url: str) -> pa.Table:
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:  # e.g. an echoed prompt of a line of several prompts
        raise StorageError(f"{url}: a result line does not fit the Parquet columns ({error}): write it as JSONL") \
            from None


def write_lines(lines: Iterable[str], url: str) -> int:
    """Write result lines as a Parquet file at ``url``, whole or not at all; returns how many. Every field of
    every line is kept: one the schema has no column for is an error, never dropped."""
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
            written += 1
            rows.append(_row(record, openai, url, written))
            if len(rows) >= ROWS_PER_WRITE:
                assert writer is not None
                writer.write_table(_table(rows, writer.schema, url))
                rows = []
        if writer is None:
            writer = pq.ParquetWriter(stream, NATIVE_SCHEMA)
        if rows:
            writer.write_table(_table(rows, writer.schema, url))
        writer.close()
    return written


def read_records(url: str) -> Iterator[dict[str, Any]]:
    """The result records of a Parquet results file exactly as the JSONL file has them (JSON text decoded,
    the null cells of fields a line has only sometimes left out)."""
    with objectstore.open_read(url) as stream:
        file = pq.ParquetFile(stream)
        openai = "custom_id" in file.schema_arrow.names
        for batch in file.iter_batches(batch_size=ROWS_PER_BATCH):
            for record in batch.to_pylist():
                for name in _OPTIONAL[openai]:
                    if record[name] is None:
                        del record[name]
                for name in _JSON_FIELDS[openai]:
                    if record.get(name) is not None:
                        record[name] = json.loads(record[name])
                if openai and record["response"] is not None:
                    record["response"]["body"] = json.loads(record["response"]["body"])
                for output in record.get("outputs", []):
                    if output["logprobs"] is None:
                        del output["logprobs"]
                yield record

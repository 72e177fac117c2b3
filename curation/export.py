"""The curated samples as fine-tuning data: DeepSeek Coder's ``{"instruction", "output"}`` lines (what its
``finetune/finetune_deepseekcoder.py`` reads) or chat ``messages`` lines, as JSONL or Parquet (by the output's
name). Every record carries ``provenance``: the job, input, line id, output number, model, the job's sampling
parameters and the verification verdict; ``params`` and ``metadata`` are JSON text, so that every file has one
schema whatever the jobs' metadata held.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any, Literal

from dscbatch.curation.source import Sample, Source

Format = Literal["deepseek", "messages"]
ROWS_PER_WRITE = 4096


def provenance(sample: Sample, source: Source) -> dict[str, Any]:
    return {"job": source.job, "source": source.name, "id": sample.id, "output": sample.output,
            "model": sample.model, "params": json.dumps(source.params) if source.params is not None else None,
            "verdict": sample.verdict,
            "metadata": json.dumps(sample.metadata, ensure_ascii=False) if sample.metadata is not None else None}


def record(sample: Sample, source: Source, form: Format) -> dict[str, Any]:
    origin = provenance(sample, source)
    if form == "messages":
        return {"messages": [{"role": "user", "content": sample.instruction},
                             {"role": "assistant", "content": sample.text}], "provenance": origin}
    return {"instruction": sample.instruction, "output": sample.text, "provenance": origin}


def write_jsonl(stream: IO[bytes], records: Iterator[dict[str, Any]]) -> int:
    written = 0
    for item in records:
        stream.write((json.dumps(item, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass"))
        written += 1
    return written


def _schema(form: Format) -> Any:
    import pyarrow as pa

    origin = pa.struct([("job", pa.string()), ("source", pa.string()), ("id", pa.string()), ("output", pa.int64()),
                        ("model", pa.string()), ("params", pa.string()), ("verdict", pa.string()),
                        ("metadata", pa.string())])
    if form == "messages":
        message = pa.struct([("role", pa.string()), ("content", pa.string())])
        return pa.schema([("messages", pa.list_(message)), ("provenance", origin)])
    return pa.schema([("instruction", pa.string()), ("output", pa.string()), ("provenance", origin)])


def write_parquet(stream: IO[bytes], records: Iterator[dict[str, Any]], form: Format) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(form)
    written = 0
    with pq.ParquetWriter(stream, schema) as writer:
        rows: list[dict[str, Any]] = []
        for item in records:
            rows.append(item)
            written += 1
            if len(rows) >= ROWS_PER_WRITE:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                rows = []
        writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    return written

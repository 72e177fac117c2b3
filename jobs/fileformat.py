"""Which files are Parquet, decided by name alone: without importing pyarrow (0.15-0.2 s that ``submit`` of a
JSONL file, the common case, would pay on every run)."""

from __future__ import annotations

SUFFIXES = (".parquet", ".pq")


def is_parquet(url: str) -> bool:
    return url.lower().endswith(SUFFIXES)

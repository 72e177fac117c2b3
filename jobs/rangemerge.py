"""Prefix groups across the ranges of a job rendered on the cluster (issue 23): a shuffle, as MapReduce's.

A render task sorts its range's items by prompt ids (``PrefixSorter``, nothing folded) and splits them into
the job's partitions by their prefix key, their first ``KEY_TOKENS`` prompt ids (``partition_of``): each
partition's items are one sorted run in the work folder (``WorkFolder.run``). Once every range is rendered, one
merge task per partition merges that partition's runs from every range, folds duplicates and cuts the shards,
so siblings anywhere in the file meet in one shard sequence as a full sort would put them (two items in
different partitions share fewer than ``KEY_TOKENS`` leading tokens). A job in input order (``--order input``)
has one partition, merged by item index. A job has as many partitions as ranges, up to ``MAX_PARTITIONS``.
"""

from __future__ import annotations

import heapq
import json
import struct
import zlib
from collections.abc import Iterable, Iterator

from dscbatch.jobs import objectstore
from dscbatch.jobs.grouping import Item, PrefixSorter, cut_shards, sort_key
from dscbatch.jobs.partitioning import KEY_TOKENS

# Partitions of a job: as many as its ranges, up to this many (a merge task handles some 46,000 items/s, so 64 of
# them merge 2,000,000 items in under a second; each merge reads one slice of every range's file).
MAX_PARTITIONS = 64


def partition_of(item: Item, partitions: int) -> int:
    """The partition of an item: a stable hash of its first ``KEY_TOKENS`` prompt ids."""
    key = item["ids"][:KEY_TOKENS]
    return zlib.crc32(struct.pack(f">{len(key)}I", *key)) % partitions


def encode_runs(items: Iterable[Item], partitions: int) -> list[bytes]:
    """Ordered ``items`` split into each partition's run (JSON lines, the order kept)."""
    runs = [bytearray() for _ in range(partitions)]
    for item in items:
        runs[partition_of(item, partitions) if partitions > 1 else 0] += json.dumps(item).encode() + b"\n"
    return [bytes(run) for run in runs]


def _items(url: str, offset: int, size: int) -> Iterator[Item]:
    """The items of the run at ``[offset, offset + size)`` of ``url``."""
    with objectstore.open_read(url, block_size=min(size, 1 << 20)) as stream:
        stream.seek(offset)
        left = size
        while left > 0 and (raw := stream.readline()):
            left -= len(raw)
            item: Item = json.loads(raw)
            yield item


def _index(item: Item) -> int:
    return int(item["i"])


def merge_runs(runs: list[tuple[str, int, int]], group_prefixes: bool, dedup: bool, max_requests: int,
               max_tokens: int) -> tuple[list[list[Item]], int]:
    """One partition's shards from its runs, each ``(url, offset, size)`` in a range's file (by prompt ids,
    duplicates folded; or by index), and how many duplicates were folded. Memory: the item at the head of each
    run, and the shards."""
    streams = [_items(url, offset, size) for url, offset, size in runs if size]
    if not group_prefixes:
        merged: Iterable[Item] = heapq.merge(*streams, key=_index)
        return list(cut_shards(merged, max_requests, max_tokens)), 0
    sorter = PrefixSorter(dedup=dedup)
    merged = heapq.merge(*streams, key=sort_key)
    ordered = sorter.fold(merged) if dedup else merged
    shards = list(cut_shards(ordered, max_requests, max_tokens))
    return shards, sorter.folded

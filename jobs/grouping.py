"""Prefix-aware order for a whole job: sort rendered items by prompt token ids, fold duplicates, cut shards.

vLLM caches prompt prefixes but runs requests in arrival order, so a file that interleaves many repository
contexts evicts each context before its next request arrives. Sorting by token ids puts every request that
shares a prefix next to the others, over the whole job. The sort is external (sorted runs spilled to a
private temporary directory, then merged), so a 2M-line file sorts in bounded memory.

Neighbours in that order with equal prompt ids and equal deterministic params (greedy, or a fixed seed)
would produce the same output: the first carries the others as ``dups`` and runs once for all of them.

An item of a line with several prompts (``more``: the prompts after its first) sorts by its first prompt, then
by the others; it is folded only into an item with the same prompts, all of them.
"""

from __future__ import annotations

import heapq
import itertools
import json
import marshal
import struct
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dscbatch.jobs.requests import DEFAULT_PARAMS, Params

# A sorted run is spilled to disk once it holds this many prompt tokens (about 40 MB of Python lists) or items.
RUN_MAX_TOKENS = 1 << 20
RUN_MAX_ITEMS = 20_000
# Items a spilled run is written and read back in at once (the merge holds one chunk of each run).
SPILL_CHUNK = 256
# Runs merged at once: more are first merged into one run on disk, so the final merge's memory is bounded.
MERGE_FAN_IN = 32
# What a folded duplicate keeps of its own item: everything its result line repeats.
DUP_FIELDS = ("i", "id", "type", "openai", "metadata", "verify")

Item = dict[str, Any]
SortKey = tuple[bytes, str, int]


def sort_key(item: Item) -> SortKey:
    # Big-endian packing keeps the ids' lexicographic order, a prefix before its extensions.
    ids = item["ids"]
    rest = json.dumps([item["params"], item["more"]] if "more" in item else item["params"], sort_keys=True)
    return struct.pack(f">{len(ids)}I", *ids), rest, item["i"]


def item_tokens(item: Item) -> int:
    """The prompt tokens an item runs: its prompt's, and those of its line's other prompts."""
    return len(item["ids"]) + sum(len(ids) for ids in item.get("more", ()))


def item_indices(item: Item) -> list[int]:
    """The line indices a shard item answers: its own and those of the duplicates folded into it."""
    return [item["i"], *(dup["i"] for dup in item.get("dups", ()))]


def folded_items(item: Item) -> list[Item]:
    """The item, then each folded duplicate as an item of its own (same prompt and params, its own id)."""
    shared = {name: value for name, value in item.items() if name not in DUP_FIELDS and name != "dups"}
    return [item, *({**shared, **dup} for dup in item.get("dups", ()))]


def _entry_key(entry: tuple[SortKey, Item]) -> SortKey:
    return entry[0]


def deterministic(params: dict[str, Any]) -> bool:
    """Whether requests with these params always give the same output: greedy, or with a fixed seed."""
    resolved = Params.model_validate(params).over(DEFAULT_PARAMS)
    return resolved.temperature == 0.0 or resolved.seed is not None


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading token ids ``a`` and ``b`` share (binary search over C-speed slice compares)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


class PrefixSorter:
    """``order(items)`` gives items sorted by prompt ids, duplicates folded; ``with`` removes the spill files."""

    def __init__(self, dedup: bool = True) -> None:
        self.dedup = dedup
        self.folded = 0  # duplicates folded into an earlier item, counted while iterating
        self._buffer: list[tuple[SortKey, Item]] = []
        self._buffer_tokens = 0
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        self._runs: list[Path] = []
        self._written = 0

    def __enter__(self) -> PrefixSorter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._directory is not None:
            self._directory.cleanup()

    def add(self, items: Iterable[Item]) -> None:
        """Take ``items`` into the sort (spilled to disk in sorted runs as the buffer fills)."""
        for item in items:
            self._buffer.append((sort_key(item), item))
            self._buffer_tokens += item_tokens(item)
            if self._buffer_tokens >= RUN_MAX_TOKENS or len(self._buffer) >= RUN_MAX_ITEMS:
                self._spill()

    def order(self, items: Iterable[Item] = ()) -> Iterator[Item]:
        """Consumes ``items`` at the first step, then yields them and those added before in prefix order."""
        self.add(items)
        self._buffer.sort(key=_entry_key)
        runs = [_read_run(path) for path in self._runs]
        merged = (item for _, item in heapq.merge(*runs, iter(self._buffer), key=_entry_key))
        yield from self.fold(merged) if self.dedup else merged

    def _spill(self) -> None:
        self._buffer.sort(key=_entry_key)
        self._runs.append(self._write_run(self._buffer))
        self._buffer, self._buffer_tokens = [], 0
        if len(self._runs) >= MERGE_FAN_IN:
            # The final merge holds a chunk of every run: merge these into one run so that stays bounded.
            merged = self._write_run(heapq.merge(*(_read_run(path) for path in self._runs), key=_entry_key))
            for path in self._runs:
                path.unlink()
            self._runs = [merged]

    def _write_run(self, entries: Iterable[tuple[SortKey, Item]]) -> Path:
        if self._directory is None:
            self._directory = tempfile.TemporaryDirectory(prefix="dscbatch-sort-")
        self._written += 1
        path = Path(self._directory.name) / f"run-{self._written}"
        with path.open("wb") as file:
            # Our own data in our own 0700 directory: no code runs on load.
            remaining = iter(entries)
            while chunk := list(itertools.islice(remaining, SPILL_CHUNK)):
                # An item's prompt ids are its sort key's bytes: written once, as bytes (marshal copies those).
                data = marshal.dumps([(key, {name: value for name, value in item.items() if name != "ids"})
                                      for key, item in chunk])
                file.write(len(data).to_bytes(8, "big") + data)  # marshal.load on a file is 10x slower
        return path

    def fold(self, items: Iterable[Item]) -> Iterator[Item]:
        """Sorted ``items`` with each run of identical deterministic requests folded into its first."""
        held: Item | None = None
        for item in items:
            if (held is not None and item["ids"] == held["ids"] and item["params"] == held["params"]
                    and item.get("more") == held.get("more") and deterministic(item["params"])):
                held.setdefault("dups", []).append({name: item[name] for name in DUP_FIELDS if name in item})
                self.folded += 1
                continue
            if held is not None:
                yield held
            held = item
        if held is not None:
            yield held


def _read_run(path: Path) -> Iterator[tuple[SortKey, Item]]:
    with path.open("rb") as file:
        while size := file.read(8):
            for key, item in marshal.loads(file.read(int.from_bytes(size, "big"))):
                item["ids"] = list(struct.unpack(f">{len(key[0]) // 4}I", key[0]))
                yield key, item


def cut_shards(items: Iterable[Item], max_requests: int, max_tokens: int) -> Iterator[list[Item]]:
    """Shards of at most ``max_requests`` items and about ``max_tokens`` prompt tokens, from sorted items.

    A full shard is cut where neighbours share the fewest tokens within its second half (the latest such
    place), so a prefix group that fits in a shard stays in one shard and one worker prefills its prefix once.
    """
    shard: list[Item] = []
    shared: list[int] = []  # shared[k]: tokens that shard[k] shares with shard[k + 1]
    tokens = 0
    for item in items:
        if shard:
            shared.append(common_prefix_length(shard[-1]["ids"], item["ids"]))
        shard.append(item)
        tokens += item_tokens(item)
        if tokens >= max_tokens:
            yield shard
            shard, shared, tokens = [], [], 0
        elif len(shard) > max_requests:  # one item past full: every candidate cut has a known neighbour
            smallest = (max_requests + 1) // 2
            cut = min(range(max_requests, smallest - 1, -1), key=lambda size: shared[size - 1])
            yield shard[:cut]
            shard, shared = shard[cut:], shared[cut:]
            tokens = sum(item_tokens(kept) for kept in shard)
    if shard:
        yield shard

"""Prefix grouping that streams: shards are cut while the file is still being read.

``grouping.PrefixSorter`` sorts the whole job before its first shard, so nothing runs until the last line is
rendered. Here items are partitioned as they arrive by a prefix key, their first ``KEY_TOKENS`` prompt ids
(one vLLM CPU KV block). Two items in different partitions share fewer than ``KEY_TOKENS`` leading tokens, so
no whole block of one can serve the other: grouping across partitions gains nothing a block cache can use.
A partition that holds ``FLUSH_SHARDS`` shards' worth (and ``FLUSH_MIN_ITEMS``) is sorted (duplicates folded,
as the full sort does) and its full shards are cut and handed out at once; its last, partial shard stays to
meet later siblings.

Memory stays bounded, and files whose partitions stay small (unique prompts, contexts with a few questions
each) stream too: when the partitions together hold more than ``HELD_MAX_ITEMS`` items or ``HELD_MAX_TOKENS``
tokens, the partitions that waited longest since their last item are evicted, until half of that is held. An
evicted partition of one item (a prompt that met no sibling) is cut into shards at once with the others like
it; one of several items (siblings that may have more to come, spread over the file) is deferred to a
``PrefixSorter``, which spills to disk, to meet them at the end of the file, while the deferred items hold
fewer than ``DEFER_MAX_TOKENS`` tokens. The first eviction cuts ``FIRST_CUT_ITEMS``, one small shard that
starts the pool within ``HELD_MAX_TOKENS`` read, whatever the file, and defers the rest. The last, partial
shard of what a later eviction cuts goes to the sorter too. At the end of the file the partitions left join it,
and its sorted rest is cut as today. ``benchmarks/grouping_stream.py`` measures the hit rate this keeps against
the full sort.

Cutting early buys time only while the pool has nothing to run, and costs hit rate: siblings still to come
miss the blocks of those cut before them. So partitions wait for the end of the file, within
``DEFER_MAX_TOKENS``, whenever waiting costs the pool nothing (``_can_wait``). Before the first shard: when the
end of the file is near (``soon``: the submitter expects it within ``submission.FIRST_SHARD_SECONDS``), so a
file read in a few seconds is grouped by one sort, as before streaming. After it: while the pool has shards
waiting (``fed``: shards of the job's queue that no worker has taken), so a pool slower than the reading (one
worker, a small pool) gets the full sort's grouping, and one that keeps up gets shards as partitions fill.

A lone prompt cut early whose siblings come later costs its group one more prefill of their shared prefix, and
where each group's siblings are spread over the whole file (a shuffled file), that is most groups: measured at
16x the throughput files, long-contexts lost a quarter of its hit rate (0.60 against 0.81) and took 1.7x the
script's time, though the worker held shards all along (it takes them from the queue at once, so ``fed`` stayed
false). So lone prompts wait for the end of the file too, as siblings do (within ``DEFER_MAX_TOKENS``), once
the file shows that its prompts have siblings: at least ``SIBLINGS_MIN`` items, and ``SIBLING_RATE`` of those
read, joined a partition or came after a lone prompt of their key was cut (the last ``CUT_KEYS_KEPT`` such keys
are kept hashed in a fixed bitmap). A file of unique prompts never shows it and keeps streaming.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from dscbatch.jobs.grouping import RUN_MAX_ITEMS, RUN_MAX_TOKENS, Item, PrefixSorter, cut_shards, item_tokens, sort_key

KEY_TOKENS = 128  # one KV block of vLLM on CPU; a GPU's 16-token blocks nest inside it
FLUSH_SHARDS = 4  # a partition is cut once it holds this many full shards' worth...
# ...and at least this many items: duplicates are folded within what is cut together, so a small file (and a
# job of small shards) is grouped whole, as the full sort does.
FLUSH_MIN_ITEMS = 1024
HELD_MAX_ITEMS = RUN_MAX_ITEMS  # what the partitions hold in memory at most, as the sorter's runs
HELD_MAX_TOKENS = RUN_MAX_TOKENS
# Evicted partitions of siblings wait on disk for the end of the file up to this many prompt tokens in all.
DEFER_MAX_TOKENS = 16 * RUN_MAX_TOKENS
FIRST_CUT_ITEMS = 16  # the first shard of a file not read soon: each of its items may have siblings still to come
CUT_KEYS_BITS = 1 << 26  # 8 MiB whatever the file: the keys of lone prompts cut early, hashed...
# ...and forgotten each time this many are marked, so that a false match stays under 1 in 1,000 (a file of millions
# of unique prompts would otherwise fill the bitmap and seem to have siblings).
CUT_KEYS_KEPT = CUT_KEYS_BITS >> 10
SIBLINGS_MIN = 8  # items that met a sibling (a partition, or a lone prompt cut early) before lone prompts wait...
SIBLING_RATE = 0.01  # ...and at least this share of the items read


class _Partition:
    __slots__ = ("items", "tokens")

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.tokens = 0


class StreamingGrouper:
    """``add(item)`` returns the shards ready to queue; ``finish()`` yields the rest. ``with`` removes spill
    files. ``folded`` counts the duplicates folded so far."""

    def __init__(self, max_requests: int, max_tokens: int, dedup: bool = True, key_tokens: int = KEY_TOKENS,
                 held_max_items: int = HELD_MAX_ITEMS, held_max_tokens: int = HELD_MAX_TOKENS,
                 flush_min_items: int = FLUSH_MIN_ITEMS, defer_max_tokens: int = DEFER_MAX_TOKENS,
                 fed: Callable[[], bool] = lambda: False, soon: Callable[[], bool] = lambda: False) -> None:
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.dedup = dedup
        self.key_tokens = key_tokens
        self.held_max_items = held_max_items
        self.held_max_tokens = held_max_tokens
        self.flush_min_items = flush_min_items
        self.defer_max_tokens = defer_max_tokens
        # Asked when a partition fills or partitions are evicted: whether the pool has shards waiting already
        # (after the first shard), whether the end of the file is near (before it).
        self.fed = fed
        self.soon = soon
        self._deferred_tokens = 0
        self._handed_out = False  # a shard was cut: deferring no longer keeps the pool waiting for its first
        self._cut_keys = bytearray(CUT_KEYS_BITS // 8)
        self._marked = 0
        self._read = self._met = 0  # items read; of those, items that met a sibling
        self._partitions: dict[tuple[int, ...], _Partition] = {}
        self._held_items = self._held_tokens = 0
        self._rest = PrefixSorter(dedup=dedup)  # the end-of-file sort: deferred partitions wait there, spilled

    @property
    def folded(self) -> int:
        return self._rest.folded

    def __enter__(self) -> StreamingGrouper:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._rest.__exit__(*exc_info)

    def add(self, item: Item) -> list[list[Item]]:
        key = tuple(item["ids"][:self.key_tokens])
        partition = self._partitions.pop(key, None)
        self._read += 1
        self._met += partition is not None or self._was_cut(key)
        if partition is None:
            partition = _Partition()
        self._partitions[key] = partition  # the most recently added to, last
        tokens = item_tokens(item)
        partition.items.append(item)
        partition.tokens += tokens
        self._held_items += 1
        self._held_tokens += tokens
        ready: list[list[Item]] = []
        if len(partition.items) >= self.flush_min_items and (len(partition.items) >= FLUSH_SHARDS * self.max_requests
                                                             or partition.tokens >= FLUSH_SHARDS * self.max_tokens):
            if self._within_budget(partition) and self._can_wait():
                del self._partitions[key]
                self._defer(partition)  # its later siblings meet it at the end of the file
            else:
                ready = self._cut(key, partition)
        if self._held_items > self.held_max_items or self._held_tokens > self.held_max_tokens:
            ready += self._evict_oldest()
        self._handed_out = self._handed_out or bool(ready)
        return ready

    def finish(self) -> Iterator[list[Item]]:
        """The shards of every item not handed out yet, in prefix order (the full sort of what is left)."""
        for partition in self._partitions.values():
            self._rest.add(partition.items)
        self._partitions.clear()
        yield from cut_shards(self._rest.order(), self.max_requests, self.max_tokens)

    def _cut(self, key: tuple[int, ...], partition: _Partition) -> list[list[Item]]:
        ordered = sorted(partition.items, key=sort_key)
        shards = list(cut_shards(self._rest.fold(ordered) if self.dedup else ordered, self.max_requests,
                                 self.max_tokens))
        kept = shards[-1]  # the last, partial shard waits for the partition's later items
        kept_tokens = sum(item_tokens(each) for each in kept)
        if len(kept) >= self.max_requests or kept_tokens >= self.max_tokens:
            kept, kept_tokens = [], 0  # a full one (a prompt of a shard's worth of tokens) goes too
        else:
            shards.pop()
        self._held_items -= len(partition.items) - len(kept)
        self._held_tokens -= partition.tokens - kept_tokens
        partition.items, partition.tokens = kept, kept_tokens
        if not kept:
            del self._partitions[key]
        return shards

    def _bit(self, key: tuple[int, ...]) -> tuple[int, int]:
        bit = hash(key) % CUT_KEYS_BITS
        return bit >> 3, 1 << (bit & 7)

    def _mark_cut(self, key: tuple[int, ...]) -> None:
        if self._marked == CUT_KEYS_KEPT:
            self._cut_keys, self._marked = bytearray(CUT_KEYS_BITS // 8), 0
        byte, mask = self._bit(key)
        self._cut_keys[byte] |= mask
        self._marked += 1

    def _was_cut(self, key: tuple[int, ...]) -> bool:
        byte, mask = self._bit(key)
        return bool(self._cut_keys[byte] & mask)

    def _has_siblings(self) -> bool:
        """Whether the file's prompts meet siblings often enough that a lone prompt likely has some to come."""
        return self._met >= SIBLINGS_MIN and self._met >= SIBLING_RATE * self._read

    def _evicted_waits(self, partition: _Partition, can_wait: bool, evicted: int) -> bool:
        """Whether an evicted partition is deferred (given ``evicted`` items of this eviction cut so far): before
        the first shard, all but ``FIRST_CUT_ITEMS`` where the end is not near; after it, siblings, and lone
        prompts too where the pool is fed or the file's prompts have siblings; always within the budget."""
        if not self._within_budget(partition):
            return False
        if not self._handed_out:
            return can_wait or evicted >= min(self.max_requests, FIRST_CUT_ITEMS)
        return can_wait or len(partition.items) > 1 or self._has_siblings()

    def _within_budget(self, partition: _Partition) -> bool:
        """Whether ``partition`` keeps the deferred partitions within ``defer_max_tokens``."""
        return self._deferred_tokens + partition.tokens <= self.defer_max_tokens

    def _can_wait(self) -> bool:
        """Whether partitions may wait for the end of the file at no cost to the pool: before the first shard,
        if the end is near; after it, while the pool has shards waiting."""
        return self.fed() if self._handed_out else self.soon()

    def _defer(self, partition: _Partition) -> None:
        """``partition`` (out of ``_partitions``) goes to the end-of-file sort, spilled to disk."""
        self._held_items -= len(partition.items)
        self._held_tokens -= partition.tokens
        self._rest.add(partition.items)
        self._deferred_tokens += partition.tokens

    def _evict_oldest(self) -> list[list[Item]]:
        # The partitions least recently added to go, until half the limits are held; a dict keeps the order in
        # which keys were (re)inserted, and ``add`` moves a partition to its end (``_evicted_waits`` decides which
        # wait for the end of the file).
        evicted: list[Item] = []
        can_wait = self._can_wait()
        while self._partitions and (self._held_items > self.held_max_items // 2
                                    or self._held_tokens > self.held_max_tokens // 2):
            key = next(iter(self._partitions))
            partition = self._partitions.pop(key)
            if self._evicted_waits(partition, can_wait, len(evicted)):
                self._defer(partition)  # more siblings may come later in the file
            else:
                self._held_items -= len(partition.items)
                self._held_tokens -= partition.tokens
                evicted.extend(partition.items)
                if len(partition.items) == 1:
                    self._mark_cut(key)
        evicted.sort(key=sort_key)
        shards = list(cut_shards(self._rest.fold(evicted) if self.dedup else evicted, self.max_requests,
                                 self.max_tokens))
        if shards and len(shards[-1]) < self.max_requests and self._handed_out:
            self._rest.add(shards.pop())  # a partial shard waits for the end of the file (the first goes out)
        return shards

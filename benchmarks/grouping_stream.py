"""Streaming prefix grouping against today's full sort: the prefix-cache hit rate of the shard sequence each
produces, without an engine.

Usage: ``python benchmarks/grouping_stream.py [--model DIR] [--scale 1] [--shard-requests 256 32]
[--spread-scale 8] [--json out.json]``.

For each ``benchmarks/throughput.py`` workload, and for a "spread" file (the many-contexts and long-contexts
shapes at ``--spread-scale``, shuffled together so that each context's siblings lie all over the file), the
items are grouped by ``PrefixSorter`` + ``cut_shards`` (today, the whole job sorted before its first shard) and
by ``StreamingGrouper`` (shards cut as partitions fill). The hit rate of a shard sequence is
``workloads.ideal_cached_tokens`` summed shard by shard (each shard may run on a worker whose cache is cold:
what the order can guarantee), plus the tokens of folded duplicates (they run once for all), over every
line's prompt tokens. ``ideal`` is the whole job's ideal hit rate, as ``throughput.py`` prints it. ``streamed``
is the share of items whose shard was cut before the end of the file. Both assume a pool that keeps up with the
reading (the submitter's ``fed`` never true: every partition is cut as it fills). ``fed``/``streamed fed``: a
pool that falls behind it (one worker, a small pool): shards wait in the queue from the first cut on, so
partitions wait for the end of the file (within ``DEFER_MAX_TOKENS``), as ``submit`` does while its queue holds
shards no worker has taken. ``ranges_N``: the shards of
``submit --render cluster`` on a file of N ranges (a file of S bytes rendered with ``--range-bytes`` B has S / B):
N partitions of the prefix keys, each merged whole from every range and cut on its own.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from workloads import DEFAULT_MODEL, WORKLOADS, Request, ideal_cached_tokens, make_workload

from dscbatch.jobs.grouping import Item, PrefixSorter, cut_shards, folded_items, item_tokens
from dscbatch.jobs.partitioning import KEY_TOKENS, StreamingGrouper
from dscbatch.jobs.rangemerge import partition_of
from dscbatch.jobs.tokenizer import ModelTokenizer

SHARD_MAX_TOKENS = 1 << 20


def items_of(requests: list[Request], tokenizer: ModelTokenizer) -> list[Item]:
    ids = tokenizer.encode_many([request.prompt for request in requests])
    return [{"i": index, "id": request.id, "type": "completion", "ids": tokenizer.with_bos(prompt),
             "params": {"max_tokens": request.max_tokens, "temperature": 0, "ignore_eos": True}}
            for index, (request, prompt) in enumerate(zip(requests, ids, strict=True))]


def hit_rate(shards: list[list[Item]], block_size: int, total_tokens: int) -> float:
    cached = 0
    for shard in shards:
        cached += ideal_cached_tokens([item["ids"] for item in shard], block_size)
        cached += sum(item_tokens(dup) for item in shard for dup in folded_items(item)[1:])
    return cached / max(1, total_tokens)


def sorted_shards(items: list[Item], shard_requests: int) -> list[list[Item]]:
    with PrefixSorter() as sorter:
        return list(cut_shards(sorter.order(iter(items)), shard_requests, SHARD_MAX_TOKENS))


def streamed_shards(items: list[Item], shard_requests: int, key_tokens: int,
                    fed: bool = False) -> tuple[list[list[Item]], int]:
    """The shards, and how many items were in shards cut before the end of the file; ``fed``: the pool has
    shards waiting from the first cut on."""
    with StreamingGrouper(shard_requests, SHARD_MAX_TOKENS, key_tokens=key_tokens, fed=lambda: fed) as grouper:
        early = [shard for item in items for shard in grouper.add(item)]
        rest = list(grouper.finish())
    return early + rest, sum(len(folded_items(item)) for shard in early for item in shard)


def ranged_shards(items: list[Item], shard_requests: int, ranges: int) -> list[list[Item]]:
    """The shards ``submit --render cluster`` cuts from a file of ``ranges`` ranges: one partition of the prefix
    keys per range (``rangemerge.partition_of``), each sorted whole (its runs merged) and cut on its own."""
    return [shard for partition in range(ranges)
            for shard in sorted_shards([dict(item) for item in items if partition_of(item, ranges) == partition],
                                       shard_requests)]


def compare(name: str, items: list[Item], shard_requests: int, key_tokens: list[int],
            ranges: list[int]) -> Iterator[dict[str, Any]]:
    total = sum(item_tokens(item) for item in items)
    prompts = [item["ids"] for item in items]
    today = sorted_shards([dict(item) for item in items], shard_requests)
    ranged = {count: ranged_shards(items, shard_requests, count) for count in ranges}
    for key in key_tokens:
        streamed, early = streamed_shards([dict(item) for item in items], shard_requests, key)
        fed, fed_early = streamed_shards([dict(item) for item in items], shard_requests, key, fed=True)
        for block in (16, 128):
            yield {"workload": name, "items": len(items), "shard_requests": shard_requests, "key_tokens": key,
                   "block": block, "ideal": round(ideal_cached_tokens(prompts, block) / total, 4),
                   "today": round(hit_rate(today, block, total), 4),
                   "streaming": round(hit_rate(streamed, block, total), 4),
                   "streamed": round(early / len(items), 3),
                   "fed": round(hit_rate(fed, block, total), 4), "streamed_fed": round(fed_early / len(items), 3),
                   **{f"ranges_{count}": round(hit_rate(shards, block, total), 4) for count, shards in ranged.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--spread-scale", type=float, default=8.0)
    parser.add_argument("--shard-requests", type=int, nargs="+", default=[256, 32])
    parser.add_argument("--key-tokens", type=int, nargs="+", default=[KEY_TOKENS])
    parser.add_argument("--ranges", type=int, nargs="*", default=[4, 16],
                        help="also group as --render cluster does a file of this many ranges (as many partitions)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tokenizer = ModelTokenizer.load(args.model)
    files = {name: items_of(make_workload(name, args.scale, tokenizer), tokenizer) for name in WORKLOADS}
    spread = [*make_workload("many-contexts", args.spread_scale, tokenizer),
              *make_workload("long-contexts", args.spread_scale, tokenizer)]
    random.Random(0).shuffle(spread)
    files["spread"] = items_of(spread, tokenizer)
    rows = []
    print(f"{'workload':<14}{'items':>7}{'shard':>6}{'key':>5}{'block':>6}{'ideal':>8}{'today':>8}{'stream':>8}"
          f"{'diff':>8}{'streamed':>9}{'fed':>8}{'diff':>8}{'str.fed':>8}"
          + "".join(f"{f'ranges {count}':>11}" for count in args.ranges))
    for shard_requests in args.shard_requests:
        for name, items in files.items():
            for row in compare(name, items, shard_requests, args.key_tokens, args.ranges):
                rows.append(row)
                print(f"{name:<14}{row['items']:>7}{shard_requests:>6}{row['key_tokens']:>5}{row['block']:>6}"
                      f"{row['ideal']:>8}{row['today']:>8}{row['streaming']:>8}"
                      f"{row['streaming'] - row['today']:>8.4f}{row['streamed']:>9}{row['fed']:>8}"
                      f"{row['fed'] - row['today']:>8.4f}{row['streamed_fed']:>8}"
                      + "".join(f"{row[f'ranges_{count}']:>11}" for count in args.ranges), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""Prefix order, duplicate folding and shard cuts, on real rendered token ids and a real Redis."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest

from dscbatch.jobs import grouping
from dscbatch.jobs.grouping import PrefixSorter, common_prefix_length, cut_shards, folded_items, item_indices
from dscbatch.jobs.store import JobStore
from dscbatch.jobs.submission import SubmitOptions, submit_job
from dscbatch.jobs.tokenizer import ModelTokenizer


def item(index: int, ids: list[int], **params: Any) -> dict[str, Any]:
    return {"i": index, "id": f"r{index}", "type": "completion", "ids": ids, "params": params}


def interleaved(contexts: int, per_context: int, seed: int = 0) -> list[dict[str, Any]]:
    """Requests over ``contexts`` shared 50-token prefixes, shuffled the way a generated file interleaves them."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(100, 30000) for _ in range(50)] for _ in range(contexts)]
    requests = [prefix + [rng.randrange(100, 30000) for _ in range(5)] for prefix in prefixes
                for _ in range(per_context)]
    rng.shuffle(requests)
    return [item(index, ids) for index, ids in enumerate(requests)]


def contexts_in_order(items: list[dict[str, Any]]) -> list[tuple[int, ...]]:
    return [tuple(each["ids"][:50]) for each in items]


def test_prefix_order_puts_each_context_together_and_keeps_every_item() -> None:
    items = interleaved(contexts=20, per_context=5)
    with PrefixSorter(dedup=False) as sorter:
        ordered = list(sorter.order(items))
    assert sorted(each["i"] for each in ordered) == list(range(100))
    runs = contexts_in_order(ordered)
    # Each context appears as one contiguous run: 20 changes of context at most.
    assert sum(a != b for a, b in itertools.pairwise(runs)) == 19


def test_external_sort_spills_and_gives_the_in_memory_order(monkeypatch: pytest.MonkeyPatch) -> None:
    items = interleaved(contexts=30, per_context=4, seed=1)
    with PrefixSorter(dedup=False) as sorter:
        in_memory = [each["i"] for each in sorter.order(items)]
    monkeypatch.setattr(grouping, "RUN_MAX_TOKENS", 500)  # 55 tokens an item: runs of 10, 12 spilled
    with PrefixSorter(dedup=False) as sorter:
        spilled = [each["i"] for each in sorter.order(items)]
        directory = Path(sorter._directory.name) if sorter._directory else None
        assert directory is not None and len(list(directory.iterdir())) == 12
    assert spilled == in_memory
    assert not directory.exists()  # the spill files are gone with the sorter
    monkeypatch.setattr(grouping, "MERGE_FAN_IN", 4)  # 12 runs: merged on disk on the way, 3 left at the end
    with PrefixSorter(dedup=False) as sorter:
        assert [each["i"] for each in sorter.order(items)] == in_memory
        assert len(sorter._runs) == 3


def test_identical_deterministic_requests_run_once() -> None:
    ids = [32013, 1551, 267, 10942]
    items = [
        item(0, ids), item(1, [5, 6]), item(2, ids), item(3, ids, temperature=0.8), item(4, ids, temperature=0.8),
        item(5, ids, temperature=0.8, seed=7), item(6, ids, temperature=0.8, seed=7), item(7, ids, max_tokens=9),
        item(8, ids),
    ]
    items[8]["metadata"] = {"k": "v"}
    with PrefixSorter() as sorter:
        ordered = list(sorter.order(items))
    runs = {each["i"]: [dup["i"] for dup in each.get("dups", [])] for each in ordered}
    # Greedy (the default) and seeded requests fold; sampled ones without a seed, or other params, do not.
    assert runs == {0: [2, 8], 1: [], 3: [], 4: [], 5: [6], 7: []}
    assert sorter.folded == 3
    first = next(each for each in ordered if each["i"] == 0)
    assert item_indices(first) == [0, 2, 8]
    answered = folded_items(first)
    assert [(each["id"], each.get("metadata")) for each in answered] == [("r0", None), ("r2", None),
                                                                        ("r8", {"k": "v"})]
    assert all(each["ids"] == ids and "dups" not in each for each in answered[1:])


def test_common_prefix_length() -> None:
    assert common_prefix_length([1, 2, 3, 4], [1, 2, 3, 5]) == 3
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2
    assert common_prefix_length([9], [1]) == 0
    assert common_prefix_length([], [1]) == 0


def test_a_full_shard_is_cut_between_prefix_groups() -> None:
    # Groups of 3 sharing a prefix, shards of at most 4: each shard ends where a group does.
    items = [item(i, [100 + i // 3] * 20 + [i]) for i in range(12)]
    shards = list(cut_shards(items, max_requests=4, max_tokens=1 << 20))
    assert [[each["i"] for each in shard] for shard in shards] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]


def test_shards_respect_their_bounds() -> None:
    items = interleaved(contexts=7, per_context=9, seed=2)
    with PrefixSorter(dedup=False) as sorter:
        shards = list(cut_shards(sorter.order(items), max_requests=8, max_tokens=1 << 20))
    assert all(4 <= len(shard) <= 8 for shard in shards[:-1]) and 1 <= len(shards[-1]) <= 8
    assert sorted(each["i"] for shard in shards for each in shard) == list(range(63))
    single = list(cut_shards(items[:5], max_requests=1, max_tokens=1 << 20))
    assert [len(shard) for shard in single] == [1] * 5
    by_tokens = list(cut_shards(items[:10], max_requests=100, max_tokens=110))  # 55 tokens an item
    assert [len(shard) for shard in by_tokens] == [2] * 5


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_submit_groups_the_job_by_prefix_and_counts_folded_duplicates(store: JobStore, deepseek_dir: Path,
                                                                      tmp_path: Path) -> None:
    header = "# repository context shared by several questions\n" * 20
    lines = [{"id": f"q{n}", "type": "completion", "prompt": f"{header}context {n % 3}\nquestion {n}"}
             for n in range(12)]  # interleaved: q0 q3 q6 q9 share context 0, q1 q4 q7 q10 context 1, ...
    lines.append({"id": "again-q1", "type": "completion", "prompt": lines[1]["prompt"]})
    lines.append({"id": "sampled-q1", "type": "completion", "prompt": lines[1]["prompt"],
                  "params": {"temperature": 0.7}})
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    queued: list[str] = []
    job_id = submit_job(store, lambda queue, job, key: queued.append(key), path,
                        SubmitOptions(model=str(deepseek_dir), shard_max_requests=5, echo_prompt=True))
    status = store.status(job_id)
    assert (status.total, status.deduplicated) == (14, 1)
    shards = [shard["items"] for shard in map(store.load_shard, queued) if shard is not None]
    items = [each for shard in shards for each in shard]
    # Every line is answered once: by its own item or as a duplicate folded into another.
    assert sorted(index for each in items for index in item_indices(each)) == list(range(14))
    assert [(each["id"], [dup["id"] for dup in each["dups"]]) for each in items if "dups" in each] == \
        [("q1", ["again-q1"])]
    # One shard per context, though the file interleaves them (context 1: four requests and the sampled one).
    contexts = [sorted({each["prompt"].split("\ncontext ")[1][0] for each in shard}) for shard in shards]
    assert contexts == [["0"], ["1"], ["2"]]
    assert [len(shard) for shard in shards] == [4, 5, 4]


def test_an_item_of_several_prompts_folds_only_into_one_with_the_same_prompts_and_counts_all_its_tokens() -> None:
    several = {**item(0, [5, 6]), "more": [[7, 8, 9]]}
    items = [several, {**item(1, [5, 6]), "more": [[7]]}, item(2, [5, 6]), {**item(3, [5, 6]), "more": [[7, 8, 9]]}]
    with PrefixSorter() as sorter:
        ordered = list(sorter.order(items))
    assert sorter.folded == 1 and sorted(item_indices(each) for each in ordered) == [[0, 3], [1], [2]]
    assert [len(shard) for shard in cut_shards([several, item(1, [1]), item(2, [2])], 10, 6)] == [2, 1]


def test_a_shard_keeps_every_item_and_token_id_through_redis(store: JobStore) -> None:
    items = [{"i": 0, "id": "a", "ids": [32013, 0, 4294967295], "params": {"max_tokens": 4}},
             {"i": 1, "id": "b", "ids": [7], "more": [[8, 9], [], [10]], "params": {}, "dups": [{"i": 2, "id": "c"}]},
             {"i": 3, "id": "d", "ids": [], "params": {}}]
    header = {"job": "j", "model": "m", "stop": [32021], "created": 1}
    keys = store.save_shards("j", [{**header, "items": items}, {**header, "items": items[:1]}], first=5)
    assert keys == [store.shard_key("j", 5), store.shard_key("j", 6)]
    assert [store.load_shard(key) for key in keys] == [{**header, "items": items}, {**header, "items": items[:1]}]


def test_a_submitted_job_record_is_a_compact_hash_that_rebuilds_the_shard_header(
        store: JobStore, deepseek_dir: Path, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": "x", "prompt": "def f():"}])
    job_id = submit_job(store, lambda queue, job, key: None, path,
                        SubmitOptions(model=str(deepseek_dir), output_url="s3://bucket/runs/a", dedup=False,
                                      source="prompts.jsonl"))
    # Short values only: Redis keeps the record as a listpack (half a hash table's bytes per finished job).
    assert store.client.object("encoding", store.job_key(job_id)) == b"listpack"
    status = store.status(job_id)
    assert (status.options["dedup"], status.options["echo_prompt"], status.options["defaults"]) == (False, False, {})
    stop = ModelTokenizer.load(str(deepseek_dir)).stop_token_ids
    assert stop and store.shard_header(job_id) == {"job": job_id, "model": deepseek_dir.name,
                                                   "stop": stop, "created": int(status.created)}

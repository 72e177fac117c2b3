"""Near-dedup speed: ``dscbatch curate -s near`` against datatrove's MinHash pipeline, side by side.

Usage: ``python benchmarks/curate_speed.py [--records 100000] [--json out.json]`` (needs
``pip install 'dscbatch[curate-bench]'``).

The input is the real code corpus of curate_corpus.py (the stdlib's and the virtual environment's Python
files) cut into chunks of ``--lines`` lines, the first ``--records`` chunks with at least one shingle. Both
systems read it as JSONL, dedup it with word 5-grams and 256 hashes in 32 bands of 8 (datatrove:
``MinhashConfig(n_grams=5, num_buckets=32, hashes_per_bucket=8)``) with the threshold of the bands alone, about
0.65, and no check of the candidate pairs (dscbatch: ``threshold=0``), on the same shingles (datatrove's text
normalization off, its words dscbatch's lower-cased ``\\w+``), and write what they keep, each in one
process; the report gives each one's wall time, the ratio, the samples each removed, the clusters each
formed and how far their pairs differ, beside how far datatrove's own pairs differ with another seed (the
control). dscbatch runs once more with its pair check at ``--threshold``. It also times the MinHash
signatures alone with rensa (what dscbatch uses) and datasketch over the same shingles.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from curate_corpus import cluster_pairs, corpus_files, write_results
from reader import print_report

from dscbatch.curation.clusters import Groups
from dscbatch.curation.config import Near, Plan
from dscbatch.curation.minhash import Signatures, shingles
from dscbatch.curation.pipeline import curate
from dscbatch.curation.source import file_source
from dscbatch.curation.text import words


def chunks(records: int, lines: int, shingle: int, seed: int = 0) -> list[str]:
    files = corpus_files()
    random.Random(seed).shuffle(files)
    found: list[str] = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        for start in range(0, len(text), lines):
            chunk = "".join(text[start:start + lines])
            if len(chunk.split()) >= shingle:
                found.append(chunk)
                if len(found) == records:
                    return found
    return found


def run_dscbatch(path: Path, out: Path, step: Near) -> tuple[float, set[str]]:
    started = time.perf_counter()
    curate(file_source(str(path)), Plan(near=step), str(out), "deepseek")
    seconds = time.perf_counter() - started
    kept = {json.loads(line)["provenance"]["id"] for line in out.open()}
    return seconds, kept


def run_datatrove(folder: Path, work: Path, step: Near) -> tuple[float, set[str], list[list[int]]]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.word_tokenizers import WordTokenizer

    class SameWords(WordTokenizer):  # type: ignore[misc]
        """dscbatch's shingle words (lower-cased ``\\w+``), so that both hash the same shingles (its own English
        tokenizer, nltk's punkt, needs a data download)."""

        def word_tokenize(self, text: str) -> list[str]:
            return words(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    from datatrove.utils.text import TextNormConfig

    same_text = TextNormConfig(lowercase=False, norm_whitespace=False, remove_punctuation=False,
                               norm_unicode_diacritics=False, norm_numbers=False)
    config = MinhashConfig(n_grams=step.shingle, num_buckets=step.bands, hashes_per_bucket=step.rows,
                           seed=step.seed, norm_config=same_text)
    logs = str(work / "logs")
    stages = [
        ([JsonlReader(str(folder)), MinhashDedupSignature(output_folder=str(work / "sigs"), config=config,
                                                          language=SameWords())], 1),
        ([MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"),
                              config=config)], step.bands),
        ([MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove"),
                              config=config, save_cluster_id=True)], 1),
        ([JsonlReader(str(folder)),
          MinhashDedupFilter(input_folder=str(work / "remove"), load_cluster_ids=True,
                             exclusion_writer=JsonlWriter(str(work / "removed"), compression=None)),
          JsonlWriter(str(work / "kept"), compression=None)], 1),
    ]
    started = time.perf_counter()
    for number, (pipeline, tasks) in enumerate(stages):
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=f"{logs}/{number}").run()
    seconds = time.perf_counter() - started
    kept = {json.loads(line)["id"] for file in (work / "kept").glob("*.jsonl") for line in file.open()}
    clusters: dict[int, list[int]] = {}
    for file in [*(work / "kept").glob("*.jsonl"), *(work / "removed").glob("*.jsonl")]:
        for line in file.open():
            doc = json.loads(line)
            if doc["metadata"]["minhash_cluster_id"] != -1:
                clusters.setdefault(doc["metadata"]["minhash_cluster_id"], []).append(int(doc["id"]))
    return seconds, kept, list(clusters.values())


def _differ(first: set[tuple[int, int]], second: set[tuple[int, int]]) -> float:
    """The share of the pairs in either set that are not in both."""
    return round(1 - len(first & second) / max(1, len(first | second)), 5)


def our_clusters(texts: list[str], step: Near) -> list[list[int]]:
    """The clusters the near step forms (what ``run_dscbatch`` ran, without the reading and writing)."""
    signatures = Signatures(step)
    for number, text in enumerate(texts):
        signatures.add(number, 0, text)
    groups = Groups(len(texts))
    signatures.cluster(groups)
    return list(groups.members(range(len(texts))).values())


def signature_speed(texts: list[str], step: Near, count: int) -> dict[str, Any]:
    import datasketch
    import rensa

    sets = [shingles(text, step.shingle) for text in texts[:count]]
    started = time.perf_counter()
    for each in sets:
        minhash = rensa.RMinHash(step.num_perm, step.seed)
        minhash.update(each)
        minhash.digest()
    rensa_s = time.perf_counter() - started
    started = time.perf_counter()
    for each in sets:
        sketch = datasketch.MinHash(num_perm=step.num_perm, seed=step.seed)
        sketch.update_batch([gram.encode() for gram in each])
        sketch.digest()
    datasketch_s = time.perf_counter() - started
    return {"records": len(sets), "rensa_s": round(rensa_s, 3), "datasketch_s": round(datasketch_s, 3),
            "datasketch_over_rensa": round(datasketch_s / rensa_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--lines", type=int, default=40)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--signature-records", type=int, default=5000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    step = Near(threshold=args.threshold)
    lsh_only = step.model_copy(update={"threshold": 0.0})  # what datatrove does: every candidate pair joins
    texts = chunks(args.records, args.lines, step.shingle)
    logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="curate-speed-") as directory:
        work = Path(directory)
        (work / "input").mkdir()
        with (work / "input" / "records.jsonl").open("w") as stream:
            for number, text in enumerate(texts):
                stream.write(json.dumps({"id": str(number), "text": text}) + "\n")
        write_results(work / "results.jsonl", texts)
        with open(work / "datatrove.log", "w") as log, contextlib.redirect_stderr(log):  # its logs and bars
            datatrove_s, datatrove_kept, datatrove_clusters = run_datatrove(work / "input", work / "datatrove", step)
            # the control: datatrove against itself with other hash functions (pairs near the bands'
            # threshold fall either way for any two hash families)
            _, _, control_clusters = run_datatrove(work / "input", work / "control",
                                                   step.model_copy(update={"seed": step.seed + 1}))
        dscbatch_s, dscbatch_kept = run_dscbatch(work / "results.jsonl", work / "curated.jsonl", lsh_only)
        checked_s, checked_kept = run_dscbatch(work / "results.jsonl", work / "checked.jsonl", step)
    ids = {str(number) for number in range(len(texts))}
    ours, theirs = our_clusters(texts, lsh_only), datatrove_clusters
    pairs = {"dscbatch": cluster_pairs(ours), "datatrove": cluster_pairs(theirs)}
    common = len(pairs["dscbatch"] & pairs["datatrove"])
    removed = {"dscbatch": ids - dscbatch_kept, "datatrove": ids - datatrove_kept}
    report = {"records": len(texts), "params": lsh_only.model_dump(),
              "dscbatch_s": round(dscbatch_s, 2), "datatrove_s": round(datatrove_s, 2),
              "datatrove_over_dscbatch": round(datatrove_s / dscbatch_s, 2),
              "dscbatch_checked": {"threshold": step.threshold, "seconds": round(checked_s, 2),
                                   "removed": len(ids - checked_kept)},
              "removed": {name: len(found) for name, found in removed.items()},
              "clusters": {"dscbatch": len(ours), "datatrove": len(theirs),
                           "samples_in_clusters": {"dscbatch": sum(map(len, ours)),
                                                   "datatrove": sum(map(len, theirs))},
                           "pairs": {name: len(found) for name, found in pairs.items()}, "pairs_in_both": common,
                           "pairs_differ_share": _differ(pairs["dscbatch"], pairs["datatrove"]),
                           "control": {"clusters": len(control_clusters), "removed": sum(map(len, control_clusters))
                                       - len(control_clusters),
                                       "pairs_differ_share": _differ(cluster_pairs(control_clusters),
                                                                     pairs["datatrove"])}},
              "removed_by_one_only": len(removed["dscbatch"] ^ removed["datatrove"]),
              "removed_differ_share": round(len(removed["dscbatch"] ^ removed["datatrove"]) / len(texts), 5),
              "signatures": signature_speed(texts, step, args.signature_records)}
    print_report(report, args.json)


if __name__ == "__main__":
    main()

"""Near-duplicate detection with MinHash LSH.

Signatures come from ``rensa`` (Rust; 35 times faster than ``datasketch`` on the same shingles here, see
docs/curation.md) over a sample's word ``shingle``-grams. Each of ``bands`` bands of ``rows`` hashes is hashed to
one 64-bit key; samples that share a key in any band (within one scope: the whole set, or one prompt's
outputs) are candidates. Two candidates' groups join when the estimated Jaccard similarity (the share of equal
signature hashes) of the groups' first samples is at least ``threshold``: every sample is like its group's
first one, not only like some other member (a chain of pairs just above the threshold would otherwise join
samples far below it). The buckets are found by
sorting each band's keys once all signatures are in, so memory is the signature matrix (4 bytes
for each of ``num_perm`` hashes of each sample) and one key per band.
"""

from __future__ import annotations

import numpy as np
import rensa

from dscbatch.curation.clusters import Groups
from dscbatch.curation.config import Near
from dscbatch.curation.text import ngrams, words

CHUNK = 4096
MAX_BUCKET_CHECKS = 8  # earlier bucket members a candidate is compared with before it is left alone


def shingles(text: str, size: int) -> list[str]:
    return list(ngrams(words(text), size))


def signature(text: str, step: Near) -> list[int]:
    minhash = rensa.RMinHash(step.num_perm, step.seed)
    minhash.update(shingles(text, step.shingle))
    return list(minhash.digest())


class Signatures:
    """The signatures of the samples added, in order, with each sample's position and scope key."""

    def __init__(self, step: Near) -> None:
        self.step = step
        self.chunks: list[np.ndarray] = []
        self.pending: list[list[int]] = []
        self.numbers: list[int] = []
        self.scopes: list[int] = []

    def add(self, number: int, scope: int, text: str) -> None:
        self.pending.append(signature(text, self.step))
        self.numbers.append(number)
        self.scopes.append(scope)
        if len(self.pending) >= CHUNK:
            self._flush()

    def extend(self, other: Signatures, offset: int) -> None:
        """Append ``other``'s signatures, its sample positions moved by ``offset``."""
        self._flush()
        self.chunks.append(other.matrix())
        self.numbers += [number + offset for number in other.numbers]
        self.scopes += other.scopes

    def load(self, numbers: np.ndarray, scopes: np.ndarray, matrix: np.ndarray) -> None:
        self.numbers, self.scopes = numbers.tolist(), scopes.tolist()
        self.pending, self.chunks = [], [matrix.astype(np.uint32)]

    def _flush(self) -> None:
        if self.pending:
            self.chunks.append(np.asarray(self.pending, dtype=np.uint32))
            self.pending = []

    def matrix(self) -> np.ndarray:
        self._flush()
        if not self.chunks:
            return np.zeros((0, self.step.num_perm), dtype=np.uint32)
        return np.concatenate(self.chunks)

    def cluster(self, groups: Groups) -> list[tuple[int, int]]:
        """Join near-duplicates in ``groups``; returns the pairs (earlier, later sample) that joined them."""
        sigs = self.matrix()
        numbers = np.asarray(self.numbers, dtype=np.int64)
        scopes = np.asarray(self.scopes, dtype=np.uint64)
        width = self.step.rows
        multipliers = np.random.default_rng(self.step.seed).integers(1, 2**63, size=width, dtype=np.uint64) | 1
        joined: list[tuple[int, int]] = []
        positions = {int(number): row for row, number in enumerate(self.numbers)}
        with np.errstate(over="ignore"):
            for band in range(self.step.bands):
                part = sigs[:, band * width:(band + 1) * width].astype(np.uint64)
                keys = (part * multipliers).sum(axis=1, dtype=np.uint64) ^ (scopes * np.uint64(0x9E3779B97F4A7C15))
                self._buckets(groups, sigs, numbers, keys, joined, positions)
        return joined

    def _buckets(self, groups: Groups, sigs: np.ndarray, numbers: np.ndarray, keys: np.ndarray,
                 joined: list[tuple[int, int]], rows: dict[int, int]) -> None:
        order = np.argsort(keys, kind="stable")  # stable: each bucket's members stay in input order
        ordered = keys[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        ends = np.r_[starts[1:], len(ordered)]
        for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
            members = order[start:end]
            for position, member in enumerate(members[1:], start=1):
                for earlier in members[max(0, position - MAX_BUCKET_CHECKS):position]:
                    first, second = groups.find(int(numbers[earlier])), groups.find(int(numbers[member]))
                    if first == second:
                        break
                    # groups join through their first samples, so that each sample is like its group's first
                    a, b = rows[first], rows[second]
                    if np.count_nonzero(sigs[a] == sigs[b]) >= self.step.threshold * self.step.num_perm:
                        groups.union(first, second)
                        joined.append((min(first, second), max(first, second)))
                        break

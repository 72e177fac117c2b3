"""Which samples are duplicates of which: a union-find over sample positions, and the sample each group keeps."""

from __future__ import annotations

from collections.abc import Iterable


class Groups:
    """Disjoint groups of the samples ``0..n-1``; each starts alone."""

    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, first: int, second: int) -> bool:
        """Join two samples' groups; False when they were one already. The smaller position is the root."""
        a, b = self.find(first), self.find(second)
        if a == b:
            return False
        if b < a:
            a, b = b, a
        self.parent[b] = a
        return True

    def members(self, items: Iterable[int]) -> dict[int, list[int]]:
        """The groups of more than one sample among ``items``, by root."""
        found: dict[int, list[int]] = {}
        for item in items:
            found.setdefault(self.find(item), []).append(item)
        return {root: members for root, members in found.items() if len(members) > 1}


def keepers(groups: Groups, items: list[int], passed: list[bool], rule: str) -> set[int]:
    """The one sample each group of ``items`` keeps: its first, or (``verified``) its first that passed
    verification, else its first."""
    chosen: dict[int, int] = {}
    for item in items:  # ascending: the first seen is the group's first
        root = groups.find(item)
        if root not in chosen or (rule == "verified" and passed[item] and not passed[chosen[root]]):
            chosen[root] = item
    return set(chosen.values())

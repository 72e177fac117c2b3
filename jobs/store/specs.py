"""Items' ``verify`` specs in the job's work folder, ``SPEC_CHUNK_ITEMS`` indices a file (``WorkFolder.verify_specs``),
and the executor's cache of the last files it read.

A file holds the specs of the indices ``N * SPEC_CHUNK_ITEMS`` up to the next multiple that carry one, in the part
format (``jobs.parts``: a header line, then ``INDEX<TAB>SPEC JSON`` per spec). Executors take the items of a job
in about index order (workers store results shard by shard), so consecutive items mostly share a file: each
process keeps the last ``CACHED_CHUNKS`` files it read, decoded, and reads a file again only once it left.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping

from dscbatch.jobs import parts

SPEC_CHUNK_ITEMS = 1024
# Files kept decoded per process: one per executor thread working on a different part of a job, or on another
# job, at once. A file is at most SPEC_CHUNK_ITEMS specs (a few KB each: the tests).
CACHED_CHUNKS = 4


def chunks(specs: Mapping[int, str]) -> Iterator[tuple[int, dict[int, str]]]:
    """``(chunk number, its specs)`` of ``specs`` by file, in order."""
    grouped: dict[int, dict[int, str]] = {}
    for index, spec in specs.items():
        grouped.setdefault(index // SPEC_CHUNK_ITEMS, {})[index] = spec
    return iter(sorted(grouped.items()))


def encode(specs: Mapping[int, str]) -> bytes:
    return parts.encode(specs.items())


def decode(url: str, data: bytes) -> dict[int, str]:
    return {index: line.decode() for index, line in parts.decode(url, data)}


class SpecCache:
    """The last ``size`` spec files read, decoded, by URL; threads share it."""

    def __init__(self, read: Callable[[str], bytes], size: int = CACHED_CHUNKS) -> None:
        self.read = read
        self.size = size
        self._files: OrderedDict[str, dict[int, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, url: str, index: int) -> str | None:
        """The spec of ``index`` in the file ``url`` (None if the file has none for it); a missing file raises
        the read's :class:`~dscbatch.core.errors.StorageError`."""
        with self._lock:
            found = self._files.get(url)
            if found is not None:
                self._files.move_to_end(url)
                return found.get(index)
        found = decode(url, self.read(url))  # outside the lock: other threads go on meanwhile
        with self._lock:
            self._files[url] = found
            self._files.move_to_end(url)
            while len(self._files) > self.size:
                self._files.popitem(last=False)
        return found.get(index)

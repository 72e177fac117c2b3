"""Items' ``verify`` specs in the job's work folder, ``SPEC_CHUNK_ITEMS`` indices a file (``WorkFolder.verify_specs``),
and the executor's cache of the last files it read.

A file holds the specs of the indices ``N * SPEC_CHUNK_ITEMS`` up to the next multiple that carry one, in the part
format (``jobs.parts``: a header line, then ``INDEX<TAB>SPEC JSON`` per spec). Executors take the items of a job
in about index order (workers store results shard by shard), so consecutive items mostly share a file: each
process keeps the last ``CACHED_CHUNKS`` files it read, decoded, and reads a file again only once it left.

A job rendered on the cluster (``jobs.clusterrender``) has files of each range's own instead
(``WorkFolder.range_verify_specs``): range R's file N holds its specs of the indices ``BASE + N *
SPEC_CHUNK_ITEMS`` up to the next multiple or the range's end, ``BASE`` its first item index. Each render task
writes only its range's files, whole (a range rendered twice writes the same bytes), and a chunk of indices that
straddles two ranges is two files. The ranges' first indices are in the job's ranges hash in Redis
(``Ranges.save_range_bases``); each process reads them once per job (``BasesCache``) and finds an index's file
with :func:`range_chunk`.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence

from dscbatch.jobs import parts

SPEC_CHUNK_ITEMS = 1024
# Files kept decoded per process: one per executor thread working on a different part of a job, or on another
# job, at once. A file is at most SPEC_CHUNK_ITEMS specs (a few KB each: the tests).
CACHED_CHUNKS = 4
# Jobs whose range bases (or that they have none) a process keeps: a few suffice, as for CACHED_CHUNKS.
CACHED_JOBS = 64

Bases = tuple[int, ...]  # the first item index of each range of a job rendered on the cluster, in range order


def chunks(specs: Mapping[int, str], base: int = 0) -> Iterator[tuple[int, dict[int, str]]]:
    """``(chunk number, its specs)`` of ``specs`` by file, in order; chunks counted from index ``base`` (a
    range's first index: its own files)."""
    grouped: dict[int, dict[int, str]] = {}
    for index, spec in specs.items():
        grouped.setdefault((index - base) // SPEC_CHUNK_ITEMS, {})[index] = spec
    return iter(sorted(grouped.items()))


def range_chunk(bases: Sequence[int], index: int) -> tuple[int, int]:
    """``(range number, chunk number in the range)`` of the file holding ``index``'s spec in a job rendered on
    the cluster whose ranges start at ``bases`` (an empty range shares its base with the next: the last range
    starting at or before ``index`` holds it)."""
    number = bisect.bisect_right(bases, index) - 1
    return number, (index - bases[number]) // SPEC_CHUNK_ITEMS


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


class BasesCache:
    """Each job's range bases (None: a job rendered locally, its specs in files of whole chunks), read once per
    job and kept for the last ``size`` jobs looked up; threads share it. A job's ranges are fixed before any of
    its items is queued, so what was read stays true."""

    def __init__(self, read: Callable[[str], Bases | None], size: int = CACHED_JOBS) -> None:
        self.read = read
        self.size = size
        self._jobs: OrderedDict[str, Bases | None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str) -> Bases | None:
        with self._lock:
            if job_id in self._jobs:
                self._jobs.move_to_end(job_id)
                return self._jobs[job_id]
        found = self.read(job_id)  # outside the lock, as SpecCache reads
        with self._lock:
            self._jobs[job_id] = found
            self._jobs.move_to_end(job_id)
            while len(self._jobs) > self.size:
                self._jobs.popitem(last=False)
        return found

"""Result parts: the form in which a job's results live in its work folder, and their merge in input order.

A part holds some results of one shard (a worker writes one each store round, ``workers.tasks``) or a
submission's error records. Its bytes: a header line ``dscbatch-part 1 COUNT``, then ``INDEX<TAB>LINE`` per
result in index order, LINE being the result line's JSON (which never holds a raw tab or newline). A part whose
header or lines do not add up is reported as corrupt, naming it.

The merge (:func:`merged`) streams every committed part once and yields each index's line in input order, in
memory bounded by ``BUCKET_ITEMS`` lines whatever the job's size: parts are read in commit order and their lines
spread over temporary bucket files by index range (a job of at most ``BUCKET_ITEMS`` items needs none), then each
bucket is read back and emitted; of two lines of one index the later commit's wins (``retry`` commits a new
result for an index whose earlier one it voided).
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from dscbatch.core.errors import MissingDataError

MAGIC = b"dscbatch-part 1 "
BUCKET_ITEMS = 1 << 16
READ_AHEAD = 16


def encode(lines: Iterable[tuple[int, str]]) -> bytes:
    """A part's bytes from ``(index, result line)`` pairs."""
    ordered = sorted(lines)
    body = b"".join(f"{index}\t{line}\n".encode() for index, line in ordered)
    return MAGIC + str(len(ordered)).encode() + b"\n" + body


def decode(name: str, data: bytes) -> list[tuple[int, bytes]]:
    """``(index, line bytes)`` of a part; :class:`MissingDataError` naming ``name`` when it is corrupt."""
    header, _, body = data.partition(b"\n")
    if not header.startswith(MAGIC) or not header[len(MAGIC):].isdigit():
        raise MissingDataError(f"result part {name} is corrupt: it does not start with a part header")
    rows = body.split(b"\n")
    if rows[-1] != b"" or len(rows) - 1 != int(header[len(MAGIC):]):
        raise MissingDataError(f"result part {name} is corrupt: it holds {len(rows) - 1} lines, its header says "
                           f"{int(header[len(MAGIC):])}")
    found = []
    for number, row in enumerate(rows[:-1], 2):
        index, tab, line = row.partition(b"\t")
        if not tab or not index.isdigit() or not line.startswith(b"{"):
            raise MissingDataError(f"result part {name} is corrupt at line {number}")
        found.append((int(index), line))
    return found


def line_of(name: str, data: bytes, index: int) -> str | None:
    """The line of ``index`` in a part, or None."""
    return next((line.decode() for found, line in decode(name, data) if found == index), None)


def merged(names: Sequence[str], read: Callable[[str], bytes], total: int, voided: set[int],
           ) -> Iterator[tuple[int, str | None]]:
    """``(index, line or None)`` for every index below ``total``, in order, from the parts ``names`` (their URLs, in
    commit order) read with ``read``; indices in ``voided`` have no line (``retry`` runs them again)."""
    if total <= BUCKET_ITEMS:
        latest: dict[int, bytes] = {}
        for name, data in _fetched(names, read):
            latest.update(decode(name, data))
        yield from _emit(range(total), latest, voided)
        return
    with tempfile.TemporaryDirectory(prefix="dscbatch-merge-") as folder:
        buckets = (total + BUCKET_ITEMS - 1) // BUCKET_ITEMS
        streams = [open(os.path.join(folder, str(number)), "wb") for number in range(buckets)]  # noqa: SIM115
        try:
            for name, data in _fetched(names, read):
                for index, line in decode(name, data):
                    if index < total:
                        streams[index // BUCKET_ITEMS].write(b"%d\t%s\n" % (index, line))
        finally:
            for stream in streams:
                stream.close()
        for number in range(buckets):
            path = os.path.join(folder, str(number))
            latest = {}
            with open(path, "rb") as bucket:
                for row in bucket:
                    number_text, _, line = row.partition(b"\t")
                    latest[int(number_text)] = line[:-1]
            os.unlink(path)
            yield from _emit(range(number * BUCKET_ITEMS, min((number + 1) * BUCKET_ITEMS, total)), latest, voided)


def _fetched(names: Sequence[str], read: Callable[[str], bytes]) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` of each part in order, ``READ_AHEAD`` reads in flight: an object store answers each read
    after a round trip, and one at a time would bound the merge by its latency, not its bandwidth."""
    with ThreadPoolExecutor(max_workers=READ_AHEAD, thread_name_prefix="dscbatch-parts") as pool:
        pending: deque[tuple[str, Future[bytes]]] = deque()
        for name in names:
            pending.append((name, pool.submit(read, name)))
            if len(pending) > READ_AHEAD:
                first, data = pending.popleft()
                yield first, data.result()
        while pending:
            first, data = pending.popleft()
            yield first, data.result()


def _emit(indices: range, latest: dict[int, bytes], voided: set[int]) -> Iterator[tuple[int, str | None]]:
    for index in indices:
        line = latest.get(index)
        yield index, None if line is None or index in voided else line.decode()

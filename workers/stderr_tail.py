"""The root cause of a failed engine start, which vLLM logs in its engine process, not in its exception.

vLLM starts its engine in child processes; when one fails, the parent only raises ``Engine core initialization
failed. See root cause above``, and the reason (for example: the KV cache cannot hold one request of the
model's context, with vLLM's estimate of the longest context that fits) is in the child's stderr. While the
engine starts, ``StderrTail`` puts a pipe in place of file descriptor 2, which the children inherit; a thread
copies everything through to the real stderr and keeps the last bytes, so the worker can name the cause in
its one-line error. The parent gets its own stderr back once the engine is up; the children keep the pipe,
and the thread keeps copying their output for as long as they write.
"""

from __future__ import annotations

import os
import re
import threading
from collections import deque
from types import TracebackType

KEEP_BYTES = 256 * 1024
# An exception line, as a traceback ends (vLLM prefixes each line of its engine's log with its process).
_EXCEPTION = re.compile(r"\b((?:[A-Za-z_][\w.]*)(?:Error|Exception)): (.+)$")
# What the parent raises when an engine process failed: the symptom, not the cause.
SYMPTOM = "Engine core initialization failed"


class StderrTail:
    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._lock = threading.Lock()
        self._saved = -1

    def __enter__(self) -> StderrTail:
        self._saved = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        output = os.dup(self._saved)  # the copier's own, kept while children write to the pipe
        threading.Thread(target=self._copy, args=(read, output), name="dscbatch-stderr", daemon=True).start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        os.dup2(self._saved, 2)  # this process writes to its stderr again; the pipe stays with the children
        os.close(self._saved)

    def _copy(self, read: int, output: int) -> None:
        while data := os.read(read, 65536):
            os.write(output, data)
            with self._lock:
                self._chunks.append(data)
                self._size += len(data)
                while self._size > KEEP_BYTES and len(self._chunks) > 1:
                    self._size -= len(self._chunks.popleft())
        os.close(read)
        os.close(output)

    def text(self) -> str:
        with self._lock:
            return b"".join(self._chunks).decode("utf-8", errors="replace")

    def root_cause(self) -> str | None:
        """The last exception line written that is not the engine's generic start failure."""
        found = None
        for line in self.text().splitlines():
            match = _EXCEPTION.search(line)
            if match and SYMPTOM not in match[2]:
                found = f"{match[1]}: {match[2].strip()}"
        return found

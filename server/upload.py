"""``POST /v1/files``: the multipart body streamed to the object store, bytes counted as they arrive.

Nothing is buffered whole: the file part goes to storage in 1 MiB writes, the other fields are a few bytes.
A declared ``Content-Length`` over the limit is refused before any of the body is stored, an undeclared one as
soon as the count passes the limit, and the half-written file is dropped. The rest of a refused body is read
and discarded (at most the limit again), so that the client, still sending, reads the 413 rather than a reset.
Each line is checked to be a JSON object as it passes, so a file that is not JSON Lines is refused at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import IO

import anyio.to_thread
from python_multipart.multipart import MultipartParser, parse_options_header

from dscbatch.core.errors import ApiError, PayloadTooLargeApiError
from dscbatch.jobs import objectstore
from dscbatch.jobs.reader import DEFAULT_MAX_LINE_BYTES, json_problem
from dscbatch.server.files import FileStore, new_file_id
from dscbatch.server.models import FileObject

WRITE_BYTES = 1 << 20
# Multipart framing and the small fields around the file part.
OVERHEAD_BYTES = 64 * 1024
MAX_FIELD_BYTES = 1024


class JsonLinesCheck:
    """Fed the file's bytes in pieces; ``problem`` names the first line that is not a JSON object."""

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.tail = bytearray()
        self.number = 0
        self.lines = 0
        self.problem: str | None = None

    def feed(self, data: bytes) -> None:
        if self.problem is not None:
            return
        searched = len(self.tail)
        self.tail += data
        cut = 0
        while (end := self.tail.find(b"\n", max(searched, cut))) >= 0:
            self._line(bytes(self.tail[cut:end]))
            cut = end + 1
        del self.tail[:cut]
        if len(self.tail) > self.max_line_bytes:
            self.problem = f"line {self.number + 1} is longer than {self.max_line_bytes} bytes"

    def finish(self) -> None:
        if self.tail and self.problem is None:
            self._line(bytes(self.tail))
        if self.problem is None and self.lines == 0:
            self.problem = "the file holds no lines"

    def _line(self, raw: bytes) -> None:
        self.number += 1
        raw = raw.removesuffix(b"\r")
        if self.number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        if not raw.strip() or self.problem is not None:
            return
        self.lines += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            self.problem = f"line {self.number}: invalid UTF-8 at byte {error.start + 1}"
            return
        problem = json_problem(text)
        if problem is not None:
            self.problem = f"line {self.number}: {problem}"


class Upload:
    """One ``POST /v1/files`` request being received: the parser's callbacks queue events, which are acted on
    (and the file's bytes written, off the event loop) between chunks."""

    def __init__(self, files: FileStore, owner: str, max_bytes: int) -> None:
        self.files = files
        self.owner = owner
        self.max_bytes = max_bytes
        self.file_id = new_file_id()
        self.check = JsonLinesCheck()
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self.events: list[tuple[str, bytes]] = []
        self.headers: dict[str, str] = {}
        self.header = [b"", b""]
        self.in_file = False
        self.buffer = bytearray()
        self.stream: IO[bytes] | None = None

    async def receive(self, content_type: str, content_length: str | None, body: AsyncIterator[bytes]) -> FileObject:
        try:
            return await self._receive(content_type, content_length, body)
        except PayloadTooLargeApiError:
            discarded = 0
            async for chunk in body:
                discarded += len(chunk)
                if discarded > self.max_bytes + OVERHEAD_BYTES:
                    break
            raise

    async def _receive(self, content_type: str, content_length: str | None, body: AsyncIterator[bytes]) -> FileObject:
        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise ApiError("expected a multipart/form-data body with the fields 'file' and 'purpose'", param="file")
        if content_length is not None and content_length.isdigit() and (
                int(content_length) > self.max_bytes + OVERHEAD_BYTES):
            raise self._too_large()
        parser = MultipartParser(boundary, self._callbacks())  # type: ignore[arg-type]
        received = 0
        with contextlib.ExitStack() as stack:
            async for chunk in body:
                received += len(chunk)
                if received > self.max_bytes + OVERHEAD_BYTES:
                    raise self._too_large()
                parser.write(chunk)
                events, self.events = self.events, []
                for name, data in events:
                    await self._event(name, data, stack)
            parser.finalize()
            if self.stream is None or self.filename is None:
                raise ApiError("the body has no 'file' part", param="file")
            purpose = self.fields.get("purpose")
            if purpose != "batch":
                raise ApiError(f"purpose {purpose!r} is not supported: this server takes purpose 'batch'",
                               param="purpose")
        return self.files.add(self.file_id, self.owner, self.filename, self.size, "batch")

    def _callbacks(self) -> dict[str, object]:
        def event(name: str) -> object:
            return lambda: self.events.append((name, b""))

        def data(name: str) -> object:
            return lambda buffer, start, end: self.events.append((name, bytes(buffer[start:end])))

        return {"on_part_begin": event("part_begin"), "on_header_field": data("header_field"),
                "on_header_value": data("header_value"), "on_header_end": event("header_end"),
                "on_headers_finished": event("headers_finished"), "on_part_data": data("part_data"),
                "on_part_end": event("part_end")}

    async def _event(self, name: str, data: bytes, stack: contextlib.ExitStack) -> None:
        if name == "part_begin":
            self.headers, self.header, self.in_file = {}, [b"", b""], False
            self.buffer.clear()
        elif name == "header_field":
            self.header[0] += data
        elif name == "header_value":
            self.header[1] += data
        elif name == "header_end":
            self.headers[self.header[0].decode("latin-1").lower()] = self.header[1].decode(errors="replace")
            self.header = [b"", b""]
        elif name == "headers_finished":
            _, options = parse_options_header(self.headers.get("content-disposition", ""))
            if options.get(b"name") == b"file" and self.stream is None:
                self.in_file = True
                self.filename = options.get(b"filename", b"upload.jsonl").decode(errors="replace")
                self.stream = stack.enter_context(objectstore.write_atomic(self.files.url(self.file_id)))
        elif name == "part_data":
            await self._data(data)
        elif name == "part_end":
            await self._part_end()

    async def _data(self, data: bytes) -> None:
        self.buffer += data
        if not self.in_file:
            if len(self.buffer) > MAX_FIELD_BYTES:
                raise ApiError(f"a form field other than 'file' is longer than {MAX_FIELD_BYTES} bytes")
            return
        self.size += len(data)
        if self.size > self.max_bytes:
            raise self._too_large()
        self.check.feed(data)
        self._refuse_if_not_jsonl()
        if len(self.buffer) >= WRITE_BYTES:
            await self._flush()

    async def _part_end(self) -> None:
        if self.in_file:
            await self._flush()
            self.check.finish()
            self._refuse_if_not_jsonl()
            self.in_file = False
            return
        _, options = parse_options_header(self.headers.get("content-disposition", ""))
        self.fields[options.get(b"name", b"").decode(errors="replace")] = self.buffer.decode(errors="replace")

    async def _flush(self) -> None:
        assert self.stream is not None
        await anyio.to_thread.run_sync(self.stream.write, bytes(self.buffer))
        self.buffer.clear()

    def _refuse_if_not_jsonl(self) -> None:
        if self.check.problem is not None:
            raise ApiError(f"The file is not valid JSON Lines: {self.check.problem}", param="file",
                           code="invalid_file_format")

    def _too_large(self) -> PayloadTooLargeApiError:
        return PayloadTooLargeApiError(f"The file is larger than the limit of {self.max_bytes} bytes "
                                       "(DSCBATCH_MAX_FILE_BYTES)", param="file", code="file_too_large")

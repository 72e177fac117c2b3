"""Files: contents in the object store at ``DSCBATCH_FILES_URL/<id>``, metadata as small records in Redis."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from typing import IO

from dscbatch.jobs import objectstore
from dscbatch.jobs.store import JobStore
from dscbatch.server.models import FileDeleted, FileObject, Page


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


class FileStore:
    def __init__(self, store: JobStore, base_url: str) -> None:
        self.records = store.owned_records("file")  # jobs/store/records.py
        self.base_url = base_url

    def url(self, file_id: str) -> str:
        return objectstore.join(self.base_url, file_id)

    def add(self, file_id: str, owner: str, filename: str, size: int, purpose: str) -> FileObject:
        """Publish a file whose contents are already stored at ``url(file_id)``."""
        created = int(time.time())
        self.records.create(file_id, owner, created, {"bytes": size, "filename": filename, "purpose": purpose})
        return FileObject.model_validate({"id": file_id, "bytes": size, "created_at": created, "filename": filename,
                                          "purpose": purpose})

    @contextlib.contextmanager
    def writing(self, owner: str, filename: str, purpose: str) -> Iterator[tuple[IO[bytes], list[FileObject]]]:
        """A stream for a new file's contents; once the block ends, the list holds the published file."""
        file_id = new_file_id()
        published: list[FileObject] = []
        with objectstore.write_atomic(self.url(file_id)) as stream:
            yield stream, published
            size = stream.tell()
        published.append(self.add(file_id, owner, filename, size, purpose))

    def get(self, file_id: str, owner: str) -> FileObject:
        record = self.records.get(file_id, owner)
        return FileObject.model_validate({"id": file_id, **{name: record[name] for name in (
            "bytes", "created_at", "filename", "purpose")}})

    def list(self, owner: str, limit: int, after: str | None) -> Page[FileObject]:
        ids, has_more = self.records.page(owner, limit, after)
        return Page[FileObject].of([self.get(file_id, owner) for file_id in ids], ids, has_more)

    def delete(self, file_id: str, owner: str) -> FileDeleted:
        self.get(file_id, owner)
        objectstore.delete(self.url(file_id))
        self.records.delete(file_id, owner)
        return FileDeleted(id=file_id, deleted=True)

    @contextlib.contextmanager
    def open(self, file_id: str, owner: str) -> Iterator[IO[bytes]]:
        self.get(file_id, owner)
        with objectstore.open_read(self.url(file_id)) as stream:
            yield stream

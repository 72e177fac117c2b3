"""Where a job's data lives: a local path or any fsspec URL (``s3://``, ``gs://``, ``https://``, ``memory://``).

Every read and write of user data outside Redis goes through here, so that each failure reads as one line that
names the URL, and so that no reader ever sees a half-written file at its final name:

- on object stores (S3, GCS, Azure) an object becomes visible only when its upload completes, so a writer that
  dies mid-stream leaves nothing at the final key;
- elsewhere (local disks, shared file systems, other fsspec file systems) the data goes to a hidden temporary
  name beside the final one and is moved there once it is whole.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Iterator
from typing import IO, Any

import fsspec

from dscbatch.core.errors import MissingDataError, StorageError

# Protocols whose writes are published atomically when the upload completes.
ATOMIC_UPLOAD_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def _filesystem(url: str) -> tuple[Any, str]:
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as error:  # an unknown protocol, or its package is not installed
        raise StorageError(f"{url}: {error}") from None
    return fs, path


def _protocol(fs: Any) -> str:
    protocol = fs.protocol
    return str(protocol[0] if isinstance(protocol, tuple | list) else protocol)


def describe(url: str, error: BaseException) -> StorageError:
    """One line for a failed storage operation on ``url``."""
    if isinstance(error, FileNotFoundError) and isinstance(error.__cause__, OSError):
        # fsspec's HTTP file system reports an unreachable server as a missing file; say what happened.
        return StorageError(f"{url}: cannot connect: {_first_line(error.__cause__)}")
    if isinstance(error, FileNotFoundError):
        return MissingDataError(f"{url}: no such file or bucket")
    if isinstance(error, PermissionError):
        return StorageError(f"{url}: permission denied")
    if isinstance(error, IsADirectoryError):
        return StorageError(f"{url}: is a folder, not a file")
    return StorageError(f"{url}: {_first_line(error)}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def join(base: str, *names: str) -> str:
    """``base`` (a folder or object-store prefix) with ``names`` appended, one ``/`` between parts."""
    return "/".join([base.rstrip("/"), *(name.strip("/") for name in names)])


def is_local(url: str) -> bool:
    """Whether ``url`` is a plain path (or ``file://``) rather than a URL of another file system."""
    protocol, _ = fsspec.core.split_protocol(url)
    return protocol in (None, "file", "local")


@contextlib.contextmanager
def open_read(url: str, block_size: int | None = None) -> Iterator[IO[bytes]]:
    """``url`` opened for streaming, seekable binary reads with ``readline(limit)``; an unreadable URL raises
    :class:`StorageError`, whenever it fails (at the open or in the middle of the stream). ``block_size``, for
    object stores, caps each request's read-ahead (a byte range's reader asks for about its own length)."""
    fs, path = _filesystem(url)
    try:
        extra = {} if block_size is None or is_local(url) else {"block_size": block_size}
        stream = fs.open(path, "rb", **extra)
        if not is_local(url):  # fsspec's buffered files take no limit in readline
            stream = io.BufferedReader(stream, buffer_size=1 << 20)
    except Exception as error:
        raise describe(url, error) from None
    try:
        with stream:
            yield stream
    except OSError as error:
        raise describe(url, error) from None


def exists(url: str) -> bool:
    fs, path = _filesystem(url)
    try:
        return bool(fs.exists(path))
    except Exception as error:
        raise describe(url, error) from None


def read_bytes(url: str) -> bytes:
    """The whole file at ``url``; any failure (a client library's own exceptions too) is a StorageError."""
    try:
        with open_read(url) as stream:
            return stream.read()
    except StorageError:
        raise
    except Exception as error:
        raise describe(url, error) from None


def write_bytes(url: str, data: bytes) -> None:
    """``data`` at ``url``, whole or not at all (``write_atomic``); any failure is a StorageError."""
    try:
        with write_atomic(url) as stream:
            stream.write(data)
    except StorageError:
        raise
    except Exception as error:
        raise describe(url, error) from None


def delete_tree(url: str) -> None:
    """Remove the folder (or object-store prefix) ``url`` and everything under it; a missing one is no error."""
    fs, path = _filesystem(url)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except FileNotFoundError:
        return
    except Exception as error:
        raise describe(url, error) from None


def delete(url: str) -> None:
    """Remove the file at ``url``; one that is already gone is not an error."""
    fs, path = _filesystem(url)
    try:
        fs.rm(path)
    except FileNotFoundError:
        return
    except Exception as error:
        raise describe(url, error) from None


def _staging(fs: Any, path: str, token: str) -> str | None:
    """Where ``write_atomic`` puts the bytes for ``path`` until they are whole (None: straight to ``path``)."""
    if _protocol(fs) in ATOMIC_UPLOAD_PROTOCOLS:
        return None
    parent, _, name = path.rpartition("/")
    return f"{parent}/.{name}.{token}.partial" if parent else f".{name}.{token}.partial"


def delete_staging(url: str) -> None:
    """Remove what writers of ``url`` killed mid-write (SIGKILL, a lost node) left at their temporary names;
    call it once no writer of ``url`` runs any more."""
    fs, path = _filesystem(url)
    pattern = _staging(fs, path, "*")
    if pattern is None:
        return
    try:
        for leftover in fs.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                fs.rm(leftover)
    except Exception as error:
        raise describe(url, error) from None


@contextlib.contextmanager
def write_atomic(url: str) -> Iterator[IO[bytes]]:
    """A binary stream whose bytes appear at ``url`` only once the block ends without an exception."""
    fs, path = _filesystem(url)
    staging = _staging(fs, path, uuid.uuid4().hex) or path
    try:
        if _protocol(fs) == "file":
            fs.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        stream = fs.open(staging, "wb")
    except Exception as error:
        raise describe(url, error) from None
    try:
        yield stream
        stream.close()
        if staging != path:
            fs.mv(staging, path)
    except BaseException as error:
        _abandon(fs, stream, staging if staging != path else None)
        if isinstance(error, OSError):
            raise describe(url, error) from None
        raise


def _abandon(fs: Any, stream: IO[bytes], staging: str | None) -> None:
    """Drop a write that did not finish: abort the upload (an object store would publish it on close) or
    remove the staging file."""
    with contextlib.suppress(Exception):
        discard = getattr(stream, "discard", None)
        if callable(discard):
            discard()
        else:
            stream.close()
    if staging is not None:
        with contextlib.suppress(Exception):
            fs.rm(staging)

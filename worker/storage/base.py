"""What every storage backend offers, the object it returns, and the key rules they share.

Keys are relative, ``/``-separated paths under the storage's root (``<job_id>/video.mp4``); a backend
puts its own prefix in front. Keys never contain ``..``, empty or ``.`` segments, backslashes or NUL,
so that no key can name something outside the root, whatever the backend maps it to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from producer.errors import STORAGE_FORBIDDEN, error

#: Size of one read or write while streaming, in bytes (1 MiB).
CHUNK_BYTES = 1 << 20
#: Code points below this (C0 controls: newline, tab, NUL) never appear in a storage key, nor DELETE.
FIRST_PRINTABLE, DELETE = 0x20, 0x7F


@dataclass(frozen=True)
class StoredObject:
    """One object as stored: where it is, how to fetch it, and what it holds."""

    #: The key the caller passed, relative to the storage root.
    key: str
    #: Stable address inside the storage (``s3://bucket/prefix/key`` or ``file:///abs/path``).
    uri: str
    #: Address a client can GET (a presigned URL for S3, the file URI for a folder).
    url: str
    bytes: int
    sha256: str
    content_type: str


@dataclass(frozen=True)
class ListedKey:
    """One object as a listing names it: its key (relative to the storage root) and its size."""

    key: str
    size_bytes: int


@runtime_checkable
class Readable(Protocol):
    """A byte stream read front to back; it need not be seekable."""

    def read(self, size: int = -1, /) -> bytes: ...


class Storage(Protocol):
    """Where results go and where inputs that producers uploaded come from."""

    def put_file(self, key: str, path: Path, content_type: str) -> StoredObject:
        """Store the file at ``path`` under ``key``."""
        ...

    def put_stream(self, key: str, readable: Readable, content_type: str) -> StoredObject:
        """Store a stream chunk by chunk, hashing it on the way, never holding the whole body."""
        ...

    def put_bytes(self, key: str, data: bytes, content_type: str) -> StoredObject:
        """Store a small body (a manifest) in one call."""
        ...

    def put_bytes_if_absent(self, key: str, data: bytes, content_type: str) -> StoredObject | None:
        """Store a small body only if nothing is stored under ``key`` yet; ``None`` if something is.

        Of several writers racing for one key, exactly one wins and the others get ``None`` (never an
        error) and leave the winner's bytes. Only a job's manifest is written this way: a run that lost
        its execution lease must not replace the manifest another run wrote. There is no
        ``put_file_if_absent``: outputs are written under the job's own keys before the manifest, and
        the manifest's presence is what marks a job complete, so fencing this one write decides whose
        result stands. Keeping a fenced-off run from rewriting outputs at all is the execution lease's
        fencing token's job, not storage's.
        """
        ...

    def exists(self, key: str) -> bool: ...

    def read_bytes(self, key: str, max_bytes: int) -> bytes:
        """The object's body; ``storage.not_found`` if absent, ``storage.too_large`` over ``max_bytes``."""
        ...

    def delete(self, key: str) -> None:
        """Delete the one object under ``key``; nothing happens if there is none (a retry is harmless)."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under the folder ``prefix/``; returns how many went."""
        ...

    def list_keys(self, prefix: str) -> Iterator[ListedKey]:
        """Every object under the folder ``prefix/``, at any depth, in no set order, one at a time.

        The listing is streamed (a page of an S3 listing, one folder entry at a time), never gathered
        whole, so a folder of millions of keys costs the memory of one page. Objects written or deleted
        while the listing runs may or may not appear; writes still in progress never do.
        """
        ...

    def owns(self, uri: str) -> bool:
        """Whether ``uri`` names an object inside this storage's root."""
        ...

    def download(self, uri: str, dest_path: Path, max_bytes: int) -> int:
        """Copy an object this storage owns to ``dest_path``; returns its size in bytes.

        Refusals raise ``input.not_found``, ``input.forbidden``, ``input.too_large`` or
        ``input.scheme_unsupported``, since the object is a job's input; a storage hiccup raises
        ``storage.unavailable``.
        """
        ...

    def uri_for(self, key: str) -> str: ...

    def url_for(self, key: str) -> str: ...

    def check(self) -> None:
        """Raise a storage error unless the storage is reachable and its root exists."""
        ...


def clean_key(key: str) -> str:
    """``key`` if it is a safe relative key, else ``storage.forbidden``.

    Control characters are refused too: a key with a newline (a job id that slipped past a check) would
    name a different file on disk than in a listing, and S3 keys with them cannot be shown or typed.
    """
    segments = key.split("/")
    bad = (
        not key
        or key.startswith("/")
        or "\\" in key
        or any(ord(char) < FIRST_PRINTABLE or ord(char) == DELETE for char in key)
        or any(segment in ("", ".", "..") for segment in segments)
    )
    if bad:
        raise error(STORAGE_FORBIDDEN, "the storage key is not a plain relative path", key=key[:200])
    return key


def clean_prefix(prefix: str) -> str:
    """A key prefix without surrounding slashes, validated like a key."""
    return clean_key(prefix.strip("/"))


class HashingReader:
    """Wraps a stream, hashing and counting what passes through.

    It deliberately has no ``seek``/``tell``: boto3 then treats it as non-seekable and reads it
    strictly in order from one thread, which is what keeps the running hash correct.
    """

    def __init__(self, source: Readable) -> None:
        self._source = source
        self._hash = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        self._hash.update(data)
        self.bytes += len(data)
        return data

    def readable(self) -> bool:
        return True

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def iter_chunks(readable: Readable, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The stream's bytes in chunks of at most ``chunk_bytes``, until it is exhausted."""
    while True:
        data = readable.read(chunk_bytes)
        if not data:
            return
        yield data


class Hasher(Protocol):
    """What hashlib's and blake3's hash objects share."""

    def update(self, data: bytes, /) -> object: ...

    def hexdigest(self) -> str: ...


def file_sha256(path: Path) -> tuple[int, str]:
    """Size in bytes and sha256 of a file, read in chunks."""
    return file_digest(path, hashlib.sha256())


def file_digest(path: Path, digest: Hasher) -> tuple[int, str]:
    """Size in bytes and hex digest of a file under ``digest``, read in chunks."""
    size = 0
    with path.open("rb") as handle:
        for chunk in iter_chunks(handle):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()

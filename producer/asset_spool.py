"""The temporary file an upload is spooled to while it is hashed (blake3) and counted, and the blake3 of a
file; used by producer/assets.py (a module of its own for size), which re-exports these names."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from producer.errors import ASSET_TOO_LARGE, error
from worker.storage.base import Hasher, file_digest

#: Prefix of the temporary files an upload is spooled to.
SPOOL_PREFIX = "dance-asset-"


@dataclass(frozen=True)
class Spooled:
    """An upload written to a local temporary file, with the blake3 and size of what was written."""

    path: Path
    hex_digest: str
    size_bytes: int


class Spool:
    """A temporary file that hashes and counts what is written to it, refusing more than ``max_bytes``.

    Used as a context manager it deletes the file on the way out, whatever happened, so a failed
    upload leaves nothing on disk.
    """

    def __init__(self, *, max_bytes: int | None = None, directory: Path | None = None) -> None:
        handle, name = tempfile.mkstemp(prefix=SPOOL_PREFIX, dir=directory)
        self.path = Path(name)
        self._file = os.fdopen(handle, "wb")
        self._hash = new_hasher()
        self._max_bytes = max_bytes
        self.size_bytes = 0

    def write(self, chunk: bytes) -> None:
        self.size_bytes += len(chunk)
        if self._max_bytes is not None and self.size_bytes > self._max_bytes:
            raise error(ASSET_TOO_LARGE, "the upload is larger than the asset size cap", max_bytes=self._max_bytes)
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self) -> Spooled:
        self._file.close()
        return Spooled(self.path, self._hash.hexdigest(), self.size_bytes)

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.discard()


def new_hasher() -> Hasher:
    """A blake3 hasher. Imported here, not at the top: a bare producer (celery and redis only) submits
    workflow jobs, which reads asset records but never hashes bytes, and has no blake3 installed."""
    from blake3 import blake3

    return blake3()


def file_blake3(path: Path) -> tuple[int, str]:
    """Size in bytes and blake3 (hex) of a file, read in chunks."""
    return file_digest(path, new_hasher())

"""The embedded default: results kept in a local folder named by a ``file:///abs/path`` URL.

Writes go to a temporary file in the target's own folder and are then renamed over the target with
``os.replace``, which is atomic on one filesystem: a reader sees the old file or the whole new one,
never half of it. A write only-if-absent hard-links the finished temporary file into place instead:
``link`` fails if the name exists, so of two writers exactly one wins, and the name never shows half a
file (the folder's filesystem must support hard links). Every path is resolved (symlinks followed) and
must stay inside the root, so neither a key nor a URI nor a symlink planted in the folder can reach
anything outside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from producer.errors import (
    CONFIG_INVALID,
    INPUT_FORBIDDEN,
    INPUT_NOT_FOUND,
    INPUT_SCHEME,
    INPUT_TOO_LARGE,
    STORAGE_FORBIDDEN,
    STORAGE_NOT_FOUND,
    STORAGE_TOO_LARGE,
    STORAGE_UNAVAILABLE,
    DanceError,
    error,
)
from worker.storage.base import (
    CHUNK_BYTES,
    ListedKey,
    Readable,
    StoredObject,
    clean_key,
    clean_prefix,
    iter_chunks,
)

#: Permissions of stored files: mkstemp creates 0600, but results are meant to be read by other
#: local processes (the producer that submitted the job, a web server).
STORED_FILE_MODE = 0o644


class _KeyTaken(Exception):
    """Internal: an only-if-absent write found its name taken (never leaves this module)."""


def path_from_file_uri(uri: str) -> Path:
    """The absolute path a ``file:`` URI names; ``config.invalid`` for a remote host or relative path."""
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise error(CONFIG_INVALID, "a file URL must be file:///absolute/path on this machine", url=uri)
    path = Path(unquote(parts.path))
    if not path.is_absolute():
        raise error(CONFIG_INVALID, "a file URL must name an absolute path", url=uri)
    return path


class LocalStorage:
    """A folder on this machine; ``uri_for`` and ``url_for`` both give ``file://`` URIs."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))

    def _inside(self, candidate: Path) -> Path | None:
        """``candidate`` with symlinks resolved, if that still lies below the root."""
        real = Path(os.path.realpath(candidate))
        if real != self.root and real.is_relative_to(self.root):
            return real
        return None

    def _path(self, key: str) -> Path:
        real = self._inside(self.root / clean_key(key))
        if real is None:
            raise error(STORAGE_FORBIDDEN, "the storage key leads outside the storage folder", key=key[:200])
        return real

    def _write(
        self, key: str, chunks: Iterable[bytes], content_type: str, place: Callable[[str, Path], None] = os.replace,
    ) -> StoredObject:
        target = self._path(key)
        with _storage_errors(key):
            target.parent.mkdir(parents=True, exist_ok=True)
        # A symlink planted between the check above and mkdir would redirect the write: check again.
        if Path(os.path.realpath(target.parent)) != target.parent:
            raise error(STORAGE_FORBIDDEN, "the storage key leads outside the storage folder", key=key)
        size, digest = _write_atomically(target, chunks, key, place)
        uri = target.as_uri()
        return StoredObject(key, uri, uri, size, digest, content_type)

    def put_file(self, key: str, path: Path, content_type: str) -> StoredObject:
        with path.open("rb") as source:
            return self._write(key, iter_chunks(source), content_type)

    def put_stream(self, key: str, readable: Readable, content_type: str) -> StoredObject:
        return self._write(key, iter_chunks(readable), content_type)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> StoredObject:
        return self._write(key, [data], content_type)

    def put_bytes_if_absent(self, key: str, data: bytes, content_type: str) -> StoredObject | None:
        try:
            return self._write(key, [data], content_type, _link_new)
        except _KeyTaken:
            return None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read_bytes(self, key: str, max_bytes: int) -> bytes:
        path = self._path(key)
        with _storage_errors(key):
            try:
                with path.open("rb") as handle:
                    data = handle.read(max_bytes + 1)
            except (FileNotFoundError, IsADirectoryError):
                raise error(STORAGE_NOT_FOUND, "no stored object has this key", key=key) from None
        if len(data) > max_bytes:
            raise error(STORAGE_TOO_LARGE, "the stored object is too large", key=key, max_bytes=max_bytes)
        return data

    def delete(self, key: str) -> None:
        path = self._path(key)
        with _storage_errors(key):
            path.unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        folder = self._path(clean_prefix(prefix))
        if not folder.is_dir():
            return 0
        count = sum(1 for entry in folder.rglob("*") if entry.is_file())
        with _storage_errors(prefix):
            # rmtree never follows symlinks, so a planted link cannot make it delete outside the root.
            shutil.rmtree(folder, ignore_errors=False)
        return count

    def list_keys(self, prefix: str) -> Iterator[ListedKey]:
        folder = self._path(clean_prefix(prefix))
        pending = [folder]
        while pending:
            for entry in _scan(pending.pop(), prefix):
                # Symlinks are neither followed nor listed: nothing this storage writes is one.
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False) and not _is_partial(entry.name):
                    listed = self._listed(entry)
                    if listed is not None:
                        yield listed

    def _listed(self, entry: os.DirEntry[str]) -> ListedKey | None:
        """The entry as a listed key; None if it was deleted since the folder was scanned."""
        try:
            size_bytes = entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            return None
        return ListedKey(Path(entry.path).relative_to(self.root).as_posix(), size_bytes)

    def _owned_path(self, uri: str) -> Path | None:
        try:
            path = path_from_file_uri(uri)
        except (DanceError, ValueError):
            return None
        return self._inside(path)

    def owns(self, uri: str) -> bool:
        return self._owned_path(uri) is not None

    def download(self, uri: str, dest_path: Path, max_bytes: int) -> int:
        scheme = urlsplit(uri).scheme
        if scheme != "file":
            raise error(INPUT_SCHEME, "this storage holds only file:// objects", scheme=scheme)
        source = self._owned_path(uri)
        if source is None:
            raise error(INPUT_FORBIDDEN, "the file lies outside the storage folder", uri=uri)
        try:
            with source.open("rb") as handle:
                return _copy_capped(handle, dest_path, max_bytes, uri)
        except (FileNotFoundError, IsADirectoryError):
            raise error(INPUT_NOT_FOUND, "the stored input does not exist", uri=uri) from None
        except PermissionError:
            raise error(INPUT_FORBIDDEN, "the stored input may not be read", uri=uri) from None

    def uri_for(self, key: str) -> str:
        return self._path(key).as_uri()

    def url_for(self, key: str) -> str:
        return self.uri_for(key)

    def check(self) -> None:
        with _storage_errors(""):
            self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise error(STORAGE_FORBIDDEN, "the storage folder is not writable", root=str(self.root))


def _scan(folder: Path, prefix: str) -> Iterator[os.DirEntry[str]]:
    """The entries of ``folder`` one at a time (none if it does not exist), closing the scan when done; a
    folder that fails to be read is a storage error."""
    with _storage_errors(prefix):
        try:
            scanner = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return
        with scanner:
            yield from scanner


def _is_partial(name: str) -> bool:
    """Whether ``name`` is the temporary file of a write still in progress (see ``_write_atomically``)."""
    return name.startswith(".") and name.endswith(".part")


def _link_new(temp_name: str, target: Path) -> None:
    """Give the finished file ``temp_name`` the name ``target`` unless that name exists (O_EXCL-like)."""
    try:
        os.link(temp_name, target)
    except FileExistsError:
        raise _KeyTaken(str(target)) from None


def _write_atomically(
    target: Path, chunks: Iterable[bytes], key: str, place: Callable[[str, Path], None]
) -> tuple[int, str]:
    """Write ``chunks`` beside ``target``, then ``place`` it there (rename over it, or link it only if
    the name is free); source errors pass through unchanged."""
    digest = hashlib.sha256()
    size = 0
    with _storage_errors(key):
        handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in chunks:
                with _storage_errors(key):
                    out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            with _storage_errors(key):
                out.flush()
                os.fsync(out.fileno())
        with _storage_errors(key):
            os.chmod(temp_name, STORED_FILE_MODE)
            place(temp_name, target)
    finally:
        # Gone after a rename; after a link (or a failure) the temporary name still has to go.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
    return size, digest.hexdigest()


def _copy_capped(source: Readable, dest_path: Path, max_bytes: int, uri: str) -> int:
    size = 0
    with dest_path.open("wb") as out:
        for chunk in iter_chunks(source, CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                break
            out.write(chunk)
    if size > max_bytes:
        dest_path.unlink(missing_ok=True)
        raise error(INPUT_TOO_LARGE, "the input exceeds the download cap", uri=uri, max_bytes=max_bytes)
    return size


@contextlib.contextmanager
def _storage_errors(key: str) -> Iterator[None]:
    """Turn a failure of the folder itself into a storage error."""
    try:
        yield
    except PermissionError as exc:
        raise error(STORAGE_FORBIDDEN, "the storage folder refused", key=key, reason=exc.strerror) from exc
    except OSError as exc:
        raise error(STORAGE_UNAVAILABLE, "the storage folder failed", key=key, reason=exc.strerror) from exc

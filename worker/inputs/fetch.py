"""Turn a job's media reference into a checked local file.

References are http(s) URLs (downloaded with :mod:`worker.inputs.http`), ``s3://`` URIs (downloaded with
the worker's own storage credentials) or ``file://`` URIs that lie inside the worker's own storage
(a producer on the same machine put them there). Anything else is refused.

The bytes are then judged by what they are, never by name or header: sniffed, matched against the kind
the job needs, and decoded. Only a file that passes is renamed to its final, content-addressed name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from producer.errors import INPUT_SCHEME, INPUT_WRONG_KIND, error
from worker.inputs.http import download_http, shown_url
from worker.inputs.sniff import MediaKind, accepts, sniff_media
from worker.inputs.verify import verify_media
from worker.settings import FetchSettings
from worker.storage import Storage
from worker.storage.base import file_sha256

#: How many characters of a sha256 go into a fetched file's name.
NAME_DIGEST_CHARS = 16


@dataclass(frozen=True)
class FetchedInput:
    """A media input on local disk, checked and ready for ComfyUI."""

    path: Path
    bytes: int
    sha256: str
    content_type: str
    #: The reference it came from, without credentials or query string.
    source: str


def _download(ref: str, dest: Path, settings: FetchSettings, storage: Storage) -> None:
    scheme = urlsplit(ref).scheme.lower()
    if scheme in ("http", "https"):
        download_http(ref, dest, settings)
    elif scheme == "s3" or (scheme == "file" and storage.owns(ref)):
        storage.download(ref, dest, settings.max_download_bytes)
    else:
        raise error(
            INPUT_SCHEME, "media references must be http(s) URLs or objects in the worker's storage",
            source=shown_url(ref), scheme=scheme,
        )


def fetch_input(
    ref: str, dest_dir: Path, kind: MediaKind, settings: FetchSettings, storage: Storage
) -> FetchedInput:
    """Fetch ``ref`` into ``dest_dir`` as a checked ``kind``; raises ``input.*`` errors."""
    source = shown_url(ref)
    dest_dir.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{kind}-", suffix=".part")
    os.close(handle)
    temp = Path(temp_name)
    try:
        _download(ref, temp, settings, storage)
        media = sniff_media(temp)
        if not accepts(kind, media):
            raise error(
                INPUT_WRONG_KIND, f"expected {kind} media, got {media.content_type}",
                source=source, expected=kind, got=media.content_type,
            )
        verify_media(temp, kind, source)
        size, digest = file_sha256(temp)
        final = dest_dir / f"{kind}-{digest[:NAME_DIGEST_CHARS]}{media.extension}"
        os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    return FetchedInput(final, size, digest, media.content_type, source)

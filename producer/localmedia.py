"""Local media files named in a request are put into storage first, so any worker can fetch them.

Only the CLI and Python API do this, on the producer's machine: the worker itself never reads local
paths (it refuses ``file://`` outside its own storage).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from producer.errors import REQUEST_BAD_MEDIA_REF, error
from producer.schema import MEDIA_SCHEMES

#: Request fields that hold media, and the group each sits in within the original endpoint's shape.
MEDIA_FIELDS = {"reference_image": "images", "dance_video": "videos"}


def stage_local_media(request: dict[str, Any], job_id: str, storage_url: str) -> dict[str, Any]:
    """Return ``request`` with every local file path replaced by the URI of its copy in storage."""
    envelope = request.get("input")
    body: dict[str, Any] = envelope if set(request) == {"input"} and isinstance(envelope, dict) else request
    staged = dict(body)
    for name, group in MEDIA_FIELDS.items():
        if _is_local(staged.get(name)):
            staged[name] = _put(Path(staged[name]), job_id, name, storage_url)
        nested = staged.get(group)
        if isinstance(nested, dict) and _is_local(nested.get(name)):
            staged[group] = {**nested, name: _put(Path(nested[name]), job_id, name, storage_url)}
    return staged


def _is_local(value: object) -> bool:
    if not isinstance(value, str) or not value.strip():
        return False
    return not value.lower().startswith(MEDIA_SCHEMES) and "://" not in value


def _put(path: Path, job_id: str, role: str, storage_url: str) -> str:
    path = path.expanduser()
    if not path.is_file():
        raise error(REQUEST_BAD_MEDIA_REF, f"'{role}' names a local file that does not exist: {path}", field=role)
    # Imported here: producers that never pass local files need no storage code or boto3.
    from worker.storage import open_storage

    storage = open_storage(storage_url)
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    stored = storage.put_file(f"{job_id}/inputs/{role}{path.suffix.lower()}", path, content_type)
    return stored.uri

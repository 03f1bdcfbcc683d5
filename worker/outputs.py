"""Move a prompt's saved files from ComfyUI's /view into storage, streaming, one at a time."""

from __future__ import annotations

import mimetypes
from pathlib import PurePosixPath
from typing import Any

from producer.errors import COMFY_NO_OUTPUTS, error
from worker.comfy_http import ComfyHttp, OutputFile
from worker.jobid import checked_job_id
from worker.storage import Storage

#: Name of the manifest written last under ``<prefix>/<job_id>/``.
MANIFEST_NAME = "manifest.json"
_VIDEO_EXTENSIONS = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v"}
_IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def output_kind(item: OutputFile) -> str:
    """``video``, ``image``, ``animation`` (animated GIF/WEBP/PNG) or ``file``."""
    suffix = PurePosixPath(item.filename).suffix.lower()
    if suffix in _VIDEO_EXTENSIONS or (item.format or "").startswith("video/"):
        return "video"
    if suffix == ".gif" or item.key == "animated":
        return "animation"
    if suffix in _IMAGE_EXTENSIONS:
        return "image"
    return "file"


def storage_names(outputs: list[OutputFile]) -> list[str]:
    """One storage name per output; two nodes may save files of the same name in other subfolders."""
    names: list[str] = []
    for item in outputs:
        name = item.filename
        if name in names or name == MANIFEST_NAME:
            name = f"{item.node_id}-{item.filename}"
        names.append(name)
    return names


def store_outputs(http: ComfyHttp, storage: Storage, job_id: str, outputs: list[OutputFile]) -> list[dict[str, Any]]:
    if not outputs:
        raise error(COMFY_NO_OUTPUTS, "ComfyUI finished the prompt but no node saved a file", job_id=job_id)
    prefix = checked_job_id(job_id)
    stored = []
    for item, name in zip(outputs, storage_names(outputs), strict=True):
        content_type = mimetypes.guess_type(item.filename)[0] or "application/octet-stream"
        with http.view(item) as body:
            obj = storage.put_stream(f"{prefix}/{name}", body, content_type)
        stored.append({
            "kind": output_kind(item),
            "uri": obj.uri,
            "url": obj.url,
            "filename": name,
            "content_type": obj.content_type,
            "bytes": obj.bytes,
            "sha256": obj.sha256,
            "node_id": item.node_id,
        })
    return stored

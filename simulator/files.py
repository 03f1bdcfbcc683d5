"""POST /upload/image and GET /view, with ComfyUI's path checks, renaming and content types (02, 09)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import mimetypes
import os
import shutil
from collections.abc import Mapping
from http import HTTPStatus
from typing import IO, Any

from aiohttp import web
from PIL import Image

from simulator.faults import Faults
from simulator.paths import Dirs

#: Read size when comparing an upload with a file of the same name, in bytes.
HASH_CHUNK_BYTES = 1 << 20
#: Pause granularity of a paced /view, in seconds.
PACE_TICK_S = 0.05
#: Extensions /view serves as downloads rather than documents.
DOWNLOAD_ONLY_EXTENSIONS = {".html", ".htm", ".js", ".css"}
#: WEBP/JPEG quality of /view?preview=... when none is given.
DEFAULT_PREVIEW_QUALITY = 90


def _hash(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _same_bytes(path: str, upload: IO[bytes]) -> bool:
    with open(path, "rb") as existing:
        same = _hash(existing) == _hash(upload)
    upload.seek(0)
    return same


class FileRoutes:
    def __init__(self, dirs: Dirs, faults: Faults) -> None:
        self._dirs = dirs
        self._faults = faults

    def _dir_by_type(self, kind: Any) -> tuple[str, str]:
        if kind is None:
            kind = "input"
        folder = self._dirs.by_type(kind)
        if folder is None:
            # ComfyUI's get_dir_by_type has no branch for other types and fails with UnboundLocalError,
            # which aiohttp answers with a plain 500.
            raise ValueError(f"unknown upload type {kind!r}")
        return folder, kind

    async def upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        overwrite = post.get("overwrite")
        upload_dir, upload_type = self._dir_by_type(post.get("type"))
        if isinstance(image, str) and image:
            # ComfyUI reads image.file from a plain form field too, and fails with a 500.
            raise AttributeError("'str' object has no attribute 'file'")
        if not isinstance(image, web.FileField) or not image.file:
            return web.Response(status=400)
        filename = image.filename
        if not filename:
            return web.Response(status=400)
        subfolder = str(post.get("subfolder", ""))
        full_output_folder = os.path.join(upload_dir, os.path.normpath(subfolder))
        filepath = os.path.abspath(os.path.join(full_output_folder, filename))
        if os.path.commonpath((upload_dir, filepath)) != upload_dir:
            return web.Response(status=400)
        os.makedirs(full_output_folder, exist_ok=True)
        stem, extension = os.path.splitext(filename)
        duplicate = False
        if overwrite not in ("true", "1"):
            number = 1
            while os.path.exists(filepath):
                # Same name and same bytes: reuse the file; same name, other bytes: "name (1).ext".
                if _same_bytes(filepath, image.file):
                    duplicate = True
                    break
                filename = f"{stem} ({number}){extension}"
                filepath = os.path.join(full_output_folder, filename)
                number += 1
        if not duplicate:
            with open(filepath, "wb") as target:
                shutil.copyfileobj(image.file, target, HASH_CHUNK_BYTES)
        self._faults.record(upload=os.path.join(subfolder, filename) if subfolder else filename)
        return web.json_response({"name": filename, "subfolder": subfolder, "type": upload_type})

    async def view(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        resolved = self._view_path(query)
        if isinstance(resolved, int):
            return web.Response(status=resolved)
        filename = os.path.basename(resolved)
        disposition = {"Content-Disposition": f'filename="{filename}"'}
        if "preview" in query:
            return _preview(resolved, query["preview"], query.get("channel", ""), disposition)
        channel = query.get("channel", "rgba")
        if channel in ("rgb", "a"):
            return _channel(resolved, channel, disposition)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if os.path.splitext(filename)[1].lower() in DOWNLOAD_ONLY_EXTENSIONS:
            content_type = "application/octet-stream"
        if self._faults.view_bytes_per_s > 0:
            return await _paced(request, resolved, self._faults.view_bytes_per_s,
                                {**disposition, "Content-Type": content_type})
        # FileResponse streams from disk with Content-Length, ETag and range support.
        return web.FileResponse(resolved, headers={**disposition, "Content-Type": content_type})

    def _view_path(self, query: Mapping[str, str]) -> str | int:
        """The file /view serves, or the status it answers instead (404 missing, 400 bad, 403 outside)."""
        if "filename" not in query:
            return HTTPStatus.NOT_FOUND
        filename, output_dir = self._dirs.annotated(query["filename"])
        if not filename or filename[0] == "/" or ".." in filename:
            return HTTPStatus.BAD_REQUEST
        output_dir = output_dir or self._dirs.by_type(query.get("type", "output"))
        if output_dir is None:
            return HTTPStatus.BAD_REQUEST
        if "subfolder" in query:
            full_output_dir = os.path.join(output_dir, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full_output_dir), output_dir)) != output_dir:
                return HTTPStatus.FORBIDDEN
            output_dir = full_output_dir
        file = os.path.join(output_dir, os.path.basename(filename))
        return file if os.path.isfile(file) else HTTPStatus.NOT_FOUND


async def _paced(request: web.Request, path: str, bytes_per_s: float, headers: dict[str, str]) -> web.StreamResponse:
    """Stream ``path`` at ``bytes_per_s`` (a benchmark knob, not ComfyUI behaviour)."""
    response = web.StreamResponse(headers={**headers, "Content-Length": str(os.path.getsize(path))})
    await response.prepare(request)
    chunk = max(1, int(bytes_per_s * PACE_TICK_S))
    with open(path, "rb") as handle:
        while piece := handle.read(chunk):
            await response.write(piece)
            await asyncio.sleep(len(piece) / bytes_per_s)
    await response.write_eof()
    return response


def _preview(file: str, preview: str, channel: str, headers: dict[str, str]) -> web.Response:
    parts = preview.split(";")
    image_format = parts[0]
    if image_format not in ("webp", "jpeg") or "a" in channel:
        image_format = "webp"
    quality = int(parts[-1]) if parts[-1].isdigit() else DEFAULT_PREVIEW_QUALITY
    buffer = io.BytesIO()
    with Image.open(file) as img:
        out = img.convert("RGB") if image_format == "jpeg" or channel == "rgb" else img
        out.save(buffer, format=image_format, quality=quality)
    return web.Response(body=buffer.getvalue(), content_type=f"image/{image_format}", headers=headers)


def _channel(file: str, channel: str, headers: dict[str, str]) -> web.Response:
    buffer = io.BytesIO()
    with Image.open(file) as img:
        if channel == "rgb":
            out = Image.merge("RGB", img.split()[:3]) if img.mode == "RGBA" else img.convert("RGB")
        else:
            alpha = img.split()[3] if img.mode == "RGBA" else Image.new("L", img.size, 255)
            out = Image.new("RGBA", img.size)
            out.putalpha(alpha)
        out.save(buffer, format="PNG")
    return web.Response(body=buffer.getvalue(), content_type="image/png", headers=headers)

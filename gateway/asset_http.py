"""The HTTP side of assets that is not a route: the v2 Asset JSON, error envelopes, Range checks, the
multipart form an upload arrives as, and who the caller is.

The v2 Asset model (comfy_sdk 0.5.0, ``comfy_low/models/_generated.py``) wants ``url`` and
``url_expires_at`` on every answer; ``created_new`` only on create answers; ``job_id`` only for job
outputs; ``expires_at`` is the record's retention (its Redis TTL).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis as redis_lib
from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.auth import Principal
from gateway.context import PRINCIPAL
from producer.assets import AssetRecord, Spool
from producer.errors import (
    ASSET_BAD_HASH,
    ASSET_BAD_RANGE,
    ASSET_BAD_UPLOAD,
    ASSET_BLOB_NOT_FOUND,
    ASSET_HASH_MISMATCH,
    ASSET_IDEMPOTENCY_REUSE,
    ASSET_MISSING,
    ASSET_NOT_FOUND,
    ASSET_TOO_LARGE,
    BROKER_UNREACHABLE,
    STORAGE_UNAVAILABLE,
    DanceError,
    error,
)

#: How much a multipart body may exceed its file's size cap (boundaries, part headers, text fields), in bytes.
FORM_OVERHEAD_BYTES = 64 << 10
#: Size of one read from an upload's file part, in bytes.
UPLOAD_CHUNK_BYTES = 256 << 10
#: The longest text field of an upload form, in bytes (a file name, a content type, a hash).
TEXT_FIELD_MAX_BYTES = 4096
#: Text fields of the v2 upload form this gateway reads (comfy_low.transport.post_assets sends these).
TEXT_FIELDS = frozenset({"content_type", "file_path", "expected_hash"})
#: Seconds a client should wait before retrying when storage or Redis is away.
RETRY_AFTER_S = 5
#: A MIME type with optional parameters, printable ASCII only, so it is safe to send back as a header.
CONTENT_TYPE_PATTERN = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;[ -~]*)?")
#: Code points below this (C0 controls) never appear in a file path we keep, nor DELETE.
FIRST_PRINTABLE, DELETE = 0x20, 0x7F

#: Project code -> (HTTP status, v2 error code). The v2 core codes come from the contract's ErrorEnvelope;
#: payload_too_large, invalid_request and range_not_satisfiable are the reference proxy's.
V2_ERRORS: dict[str, tuple[int, str]] = {
    ASSET_BAD_UPLOAD: (422, "invalid_request"),
    ASSET_BAD_HASH: (422, "invalid_request"),
    ASSET_MISSING: (422, "missing_asset"),
    ASSET_TOO_LARGE: (413, "payload_too_large"),
    ASSET_HASH_MISMATCH: (409, "hash_mismatch"),
    ASSET_BLOB_NOT_FOUND: (404, "blob_not_found"),
    ASSET_NOT_FOUND: (404, "not_found"),
    ASSET_BAD_RANGE: (416, "range_not_satisfiable"),
    ASSET_IDEMPOTENCY_REUSE: (422, "idempotency_key_reuse"),
    STORAGE_UNAVAILABLE: (503, "storage_unavailable"),
    BROKER_UNREACHABLE: (503, "broker_unavailable"),
}
#: Status and v2 code of any other project error: the cluster, not the caller, is at fault.
FALLBACK_ERROR = (500, "internal_error")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def envelope(exc: DanceError, headers: Mapping[str, str] | None = None) -> web.Response:
    """The v2 error envelope for a project error; the project code rides along in the details."""
    status, code = V2_ERRORS.get(exc.code, FALLBACK_ERROR)
    extra = dict(headers or {})
    if exc.retryable:
        extra.setdefault(hdrs.RETRY_AFTER, str(RETRY_AFTER_S))
    details = {"dance_code": exc.code, **exc.details}
    body = {"error": {"code": code, "message": exc.message, "details": details}}
    return web.json_response(body, status=status, headers=extra)


def guarded(handler: Handler) -> Handler:
    """``handler`` with project errors answered as envelopes and a lost Redis as a retryable 503."""

    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RangeRefused as refused:
            return envelope(refused.error, {hdrs.CONTENT_RANGE: f"bytes */{refused.size_bytes}"})
        except DanceError as exc:
            return envelope(exc)
        except redis_lib.RedisError as exc:
            return envelope(error(BROKER_UNREACHABLE, "Redis did not answer", cause=type(exc).__name__))

    return run


def caller_owner(request: web.Request) -> str:
    """The caller's owner name: the name of the principal the auth middleware put on the request.

    An app without that middleware (the asset routes alone) has no principal: every caller is "", as on
    a keyless gateway.
    """
    principal: Principal | None = request.get(PRINCIPAL)
    return "" if principal is None else principal.name


# The Asset JSON ---------------------------------------------------------------------------------------------
def iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat()


def presigned_expiry(url: str) -> float | None:
    """When a presigned S3 URL stops working (epoch s), read from its query; None if it says nothing."""
    query = parse_qs(urlsplit(url).query)
    signed_at, lifetime = query.get("X-Amz-Date"), query.get("X-Amz-Expires")
    if signed_at and lifetime and lifetime[0].isdigit():
        start = datetime.strptime(signed_at[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        return (start + timedelta(seconds=int(lifetime[0]))).timestamp()
    legacy = query.get("Expires")
    if legacy and legacy[0].isdigit():
        return float(legacy[0])
    return None


@dataclass(frozen=True)
class Location:
    """Where a client fetches an asset's bytes, and until when that address works (epoch s)."""

    url: str
    expires_at: float
    #: True when the gateway serves the bytes itself (a storage folder), False for a presigned URL.
    served_here: bool


def asset_json(record: AssetRecord, location: Location, expires_at: float, created_new: bool | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": record.id,
        "hash": record.hash,
        "size_bytes": record.size_bytes,
        "content_type": record.content_type,
        "file_path": record.file_path,
        "created_at": iso(record.created_at),
        "url": location.url,
        "url_expires_at": iso(location.expires_at),
        "expires_at": iso(expires_at),
    }
    if created_new is not None:
        body["created_new"] = created_new
    if record.job_id is not None:
        body["job_id"] = record.job_id
    return body


def expires_in(ttl_s: int) -> float:
    """Epoch seconds ``ttl_s`` from now (a Redis TTL that is gone or endless counts as now)."""
    return time.time() + max(ttl_s, 0)


# Range ------------------------------------------------------------------------------------------------------
class RangeRefused(Exception):
    """Internal: a Range that names no byte of the asset; answered 416 with the size in Content-Range."""

    def __init__(self, size_bytes: int, reason: str) -> None:
        super().__init__(reason)
        self.size_bytes = size_bytes
        self.error = error(ASSET_BAD_RANGE, reason, size_bytes=size_bytes)


def check_range(request: web.Request, size_bytes: int) -> None:
    """Refuse a Range header the content route cannot serve: unparsable, several ranges, or past the end.

    A satisfiable single range is served as 206 by ``web.FileResponse``, which reads the same header.
    """
    if hdrs.RANGE not in request.headers:
        return
    try:
        wanted = request.http_range
    except ValueError:
        raise RangeRefused(size_bytes, "the Range header is not one byte range (bytes=a-b, a- or -n)") from None
    start = wanted.start
    if start is None:
        return
    if start < 0:
        if wanted.stop is None and size_bytes > 0:
            return
        raise RangeRefused(size_bytes, "a suffix range of an empty asset names no byte")
    if start >= size_bytes:
        raise RangeRefused(size_bytes, "the range starts past the end of the asset")


# The upload form --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UploadForm:
    """The text fields of an upload and what its file part declared; the bytes went to the spool."""

    fields: dict[str, str]
    part_content_type: str | None
    part_filename: str | None


def bad_upload(message: str, **details: Any) -> DanceError:
    return error(ASSET_BAD_UPLOAD, message, **details)


def clean_content_type(value: str) -> str:
    if len(value) > TEXT_FIELD_MAX_BYTES or not CONTENT_TYPE_PATTERN.fullmatch(value):
        raise bad_upload("content_type is not a MIME type", content_type=value[:200])
    return value


def clean_file_path(value: str) -> str:
    if not value or any(ord(char) < FIRST_PRINTABLE or ord(char) == DELETE for char in value):
        raise bad_upload("file_path must be a non-empty name without control characters", file_path=value[:200])
    return value


async def _read_text(part: BodyPartReader) -> str:
    """A text field, refused past TEXT_FIELD_MAX_BYTES instead of read whole (``part.text()`` is unbounded)."""
    data = b""
    while chunk := await part.read_chunk(TEXT_FIELD_MAX_BYTES):
        data += chunk
        if len(data) > TEXT_FIELD_MAX_BYTES:
            raise bad_upload("a text field of the form is too long", field=part.name)
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise bad_upload("a text field of the form is not UTF-8", field=part.name) from None


async def _spool_file(part: BodyPartReader, spool: Spool) -> None:
    while chunk := await part.read_chunk(UPLOAD_CHUNK_BYTES):
        # Hashing and the disk write happen in a thread: a slow disk must not stall every other request
        # (an SSE stream among them) that this event loop serves.
        await asyncio.to_thread(spool.write, chunk)


async def read_upload(request: web.Request, spool: Spool) -> UploadForm:
    """Read a v2 upload form, streaming its one ``file`` part into ``spool``; ``asset.bad_upload`` else."""
    if request.content_type != "multipart/form-data":
        raise bad_upload("the upload must be multipart/form-data", content_type=request.content_type)
    fields: dict[str, str] = {}
    part_type: str | None = None
    part_filename: str | None = None
    seen_file = False
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name is None:
                raise bad_upload("every part of the form must be a named field")
            if part.name == "file" and not seen_file:
                seen_file = True
                part_type, part_filename = part.headers.get(hdrs.CONTENT_TYPE), part.filename
                await _spool_file(part, spool)
            elif part.name in TEXT_FIELDS and part.name not in fields:
                fields[part.name] = await _read_text(part)
            else:
                # tags among them: this cluster keeps none, and a silently dropped field would lie.
                raise bad_upload("the form has a field this gateway does not take, or one twice", field=part.name)
    except (ValueError, AssertionError, HttpProcessingError) as exc:
        # aiohttp's multipart reader raises these for a body that breaks its boundary or part headers.
        raise bad_upload("the multipart body is malformed", cause=type(exc).__name__) from None
    if not seen_file:
        raise bad_upload("the form has no file part")
    return UploadForm(fields, part_type, part_filename)

"""The v2 asset routes: upload (multipart, streamed, blake3-addressed, deduplicated), mint from a hash,
probe a hash, describe an asset, serve or redirect to its bytes, and delete it (its blob too when no
other record names it: producer/assets.py ``delete``).

Every upload is streamed into a temporary file while it is hashed (never held in memory), refused past
the size cap or on a wrong declared hash before anything is stored, and the temporary file is removed
whatever happens: a failed upload leaves no blob, no record and no file. Redis and storage calls are
blocking, so they run in worker threads, off the event loop.

The bytes: from a storage folder the gateway serves them itself, Range-capable (206, 416); from S3 it
answers 307 to a presigned URL. The SDK follows that redirect for content downloads (its client follows
redirects and drops the bearer token for the other origin) and reads the ``Location`` itself in
``get_asset_content_url``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis as redis_lib
from aiohttp import hdrs, web

from gateway.asset_http import (
    FORM_OVERHEAD_BYTES,
    Location,
    asset_json,
    caller_owner,
    check_range,
    clean_content_type,
    clean_file_path,
    expires_in,
    guarded,
    presigned_expiry,
    read_upload,
)
from gateway.asset_replay import remember, replayed, upload_key
from gateway.context import CONTEXT
from gateway.settings import DEFAULT_MAX_ASSET_BYTES, GatewaySettings
from producer import assets
from producer.assets import DEFAULT_CONTENT_TYPE, AssetRecord, Spool
from producer.errors import (
    ASSET_BAD_HASH,
    ASSET_BAD_UPLOAD,
    ASSET_BLOB_NOT_FOUND,
    ASSET_NOT_FOUND,
    ASSET_TOO_LARGE,
    error,
)
from producer.redisurl import redis_client
from worker.storage import Storage, open_storage
from worker.storage.local import path_from_file_uri

#: The largest JSON body of a mint-from-hash request, in bytes.
FROM_HASH_MAX_BYTES = 16 << 10
#: Fields of a mint-from-hash body this gateway reads (comfy_low.transport.asset_from_hash sends these).
FROM_HASH_FIELDS = frozenset({"hash", "file_path"})
#: Name of the content route, for building its URL.
CONTENT_ROUTE = "v2-asset-content"
#: Seconds one Redis call of the asset routes may take before it fails (the producer's broker timeout).
REDIS_SOCKET_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class AssetServices:
    """What the asset routes need, put on the app under ``ASSET_SERVICES`` by whoever builds it."""

    redis: redis_lib.Redis
    storage: Storage
    #: The largest asset an upload may carry, in bytes.
    max_upload_bytes: int = DEFAULT_MAX_ASSET_BYTES
    #: Folder of the temporary files uploads are spooled to (None: the system's temporary folder).
    spool_dir: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AssetServices:
        """Services named by the same variables the gateway and the workers read."""
        return cls.from_settings(GatewaySettings.from_env(environ))

    @classmethod
    def from_settings(cls, settings: GatewaySettings, redis: redis_lib.Redis | None = None) -> AssetServices:
        """The broker's Redis and the cluster's storage. ``redis``, when given, is the app's own (its producer
        client's), so that the asset routes use exactly what the job routes use."""
        producer = settings.producer
        client = redis if redis is not None else redis_client(
            producer.broker_url, producer.sentinel_master, socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        )
        return cls(
            redis=client,
            storage=open_storage(producer.storage_url, presign_expires_s=settings.presign_expires_s),
            max_upload_bytes=settings.max_asset_bytes,
            spool_dir=settings.spool_dir,
        )


ASSET_SERVICES = web.AppKey("dance.gateway.asset_services", AssetServices)


async def _services_from_env(app: web.Application) -> AsyncIterator[None]:
    """Services for an app that set none: its gateway context's settings and Redis where it has them."""
    ctx = app.get(CONTEXT)
    if ctx is None:
        services = AssetServices.from_env()
    else:
        services = AssetServices.from_settings(ctx.settings, redis=ctx.client.redis)
    app[ASSET_SERVICES] = services
    yield
    if ctx is None:
        services.redis.close()


def add_asset_routes(app: web.Application) -> None:
    """Register the v2 asset routes.

    Their Redis and storage are ``app[ASSET_SERVICES]`` if the caller set it first, else built from the
    environment when the app starts (and closed when it stops).
    """
    if ASSET_SERVICES not in app:
        app.cleanup_ctx.append(_services_from_env)
    app.router.add_post("/api/v2/assets", guarded(upload_asset))
    app.router.add_post("/api/v2/assets/from-hash", guarded(mint_from_hash))
    app.router.add_route("HEAD", "/api/v2/assets/by-hash/{hash}", guarded(probe_hash))
    app.router.add_get("/api/v2/assets/{id}", guarded(describe_asset))
    app.router.add_delete("/api/v2/assets/{id}", guarded(delete_asset))
    app.router.add_get("/api/v2/assets/{id}/content", guarded(asset_content), name=CONTENT_ROUTE)


def _services(request: web.Request) -> AssetServices:
    return request.app[ASSET_SERVICES]


def _location(request: web.Request, services: AssetServices, record: AssetRecord, expires_at: float) -> Location:
    """The presigned URL where storage gives one, else this gateway's content route (good while the asset lives)."""
    stored_url = services.storage.url_for(record.key)
    if urlsplit(stored_url).scheme in ("http", "https"):
        return Location(stored_url, presigned_expiry(stored_url) or expires_at, served_here=False)
    route = request.app.router[CONTENT_ROUTE].url_for(id=record.id)
    return Location(str(request.url.origin().join(route)), expires_at, served_here=True)


def _describe(
    request: web.Request, services: AssetServices, record: AssetRecord, created_new: bool | None,
) -> dict[str, Any]:
    """The v2 Asset JSON of a record (blocking: reads the record's TTL and presigns)."""
    expires_at = expires_in(services.redis.ttl(assets.record_key(record.id)))
    return asset_json(record, _location(request, services, record, expires_at), expires_at, created_new)


async def _visible_record(request: web.Request) -> AssetRecord:
    """The asset the path names if the caller may use it, else ``asset.not_found`` (never telling which)."""
    asset_id = request.match_info["id"]
    record = await asyncio.to_thread(assets.load_for, _services(request).redis, asset_id, caller_owner(request))
    if record is None:
        raise error(ASSET_NOT_FOUND, "no asset with this id exists for the caller", asset_id=asset_id[:80])
    return record


async def upload_asset(request: web.Request) -> web.Response:
    """POST /api/v2/assets: 201 with ``created_new: true`` for new bytes, 200 with false for a dedup hit.

    A repeat under the same Idempotency-Key answers what the first upload did (gateway/asset_replay.py).
    """
    services = _services(request)
    owner = caller_owner(request)
    replay_key = upload_key(request, owner)
    declared = request.content_length
    if declared is not None and declared > services.max_upload_bytes + FORM_OVERHEAD_BYTES:
        raise error(ASSET_TOO_LARGE, "the upload is larger than the asset size cap",
                    max_bytes=services.max_upload_bytes)
    with Spool(max_bytes=services.max_upload_bytes, directory=services.spool_dir) as spool:
        form = await read_upload(request, spool)
        spooled = spool.finish()
        expected = form.fields.get("expected_hash") or None
        if expected is not None and assets.parse_hash(expected) is None:
            raise error(ASSET_BAD_HASH, "expected_hash is not blake3:<64 hex digits>", expected_hash=expected[:80])
        assets.check_expected_hash(spooled, expected)
        content_type = clean_content_type(
            form.fields.get("content_type") or form.part_content_type or DEFAULT_CONTENT_TYPE
        )
        named = form.fields.get("file_path") or form.part_filename
        file_path = None if named is None else clean_file_path(named)

        def store() -> tuple[dict[str, Any], bool]:
            replay = None if replay_key is None else replayed(services.redis, replay_key, spooled.hex_digest)
            if replay is not None:
                record, created_new = replay
            else:
                record, created_new = assets.store_spooled(
                    services.redis, services.storage, spooled, content_type=content_type, file_path=file_path,
                    owner=owner,
                )
                if replay_key is not None:
                    remember(services.redis, replay_key, record, created_new)
            return _describe(request, services, record, created_new), created_new

        body, created_new = await asyncio.to_thread(store)
    return web.json_response(body, status=201 if created_new else 200)


async def _json_object(request: web.Request, max_bytes: int) -> dict[str, Any]:
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise error(ASSET_BAD_UPLOAD, "the JSON body is too large", max_bytes=max_bytes)
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise error(ASSET_BAD_UPLOAD, "the JSON body is too large", max_bytes=max_bytes)
    try:
        data = json.loads(raw)
    except ValueError:
        raise error(ASSET_BAD_UPLOAD, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise error(ASSET_BAD_UPLOAD, "the body is not a JSON object")
    return data


async def mint_from_hash(request: web.Request) -> web.Response:
    """POST /api/v2/assets/from-hash: 201 with a new asset over bytes the caller has uploaded before."""
    services = _services(request)
    owner = caller_owner(request)
    data = await _json_object(request, FROM_HASH_MAX_BYTES)
    unknown = sorted(set(data) - FROM_HASH_FIELDS)
    if unknown:
        # tags among them: this cluster keeps none, and a silently dropped field would lie.
        raise error(ASSET_BAD_UPLOAD, "the body has fields this gateway does not take", fields=unknown)
    hash_value = data.get("hash")
    if not isinstance(hash_value, str) or assets.parse_hash(hash_value) is None:
        raise error(ASSET_BAD_HASH, "hash is not blake3:<64 hex digits>")
    named = data.get("file_path")
    if named is not None and not isinstance(named, str):
        raise error(ASSET_BAD_UPLOAD, "file_path must be a string")
    file_path = None if named is None else clean_file_path(named)

    def mint() -> dict[str, Any] | None:
        record = assets.from_hash(services.redis, hash_value, file_path=file_path, owner=owner)
        return None if record is None else _describe(request, services, record, False)

    body = await asyncio.to_thread(mint)
    if body is None:
        raise error(ASSET_BLOB_NOT_FOUND, "no blob with this hash among the caller's uploads")
    return web.json_response(body, status=201)


async def probe_hash(request: web.Request) -> web.Response:
    """HEAD /api/v2/assets/by-hash/{hash}: 200 if the caller may mint from the hash, else 404."""
    services = _services(request)
    hash_value = request.match_info["hash"]
    if assets.parse_hash(hash_value) is None:
        raise error(ASSET_BAD_HASH, "the hash is not blake3:<64 hex digits>")
    entry = await asyncio.to_thread(assets.blob_for_hash, services.redis, hash_value, owner=caller_owner(request))
    return web.Response(status=200 if entry is not None else 404)


async def describe_asset(request: web.Request) -> web.Response:
    """GET /api/v2/assets/{id}: the Asset JSON with a fresh content URL."""
    services = _services(request)
    record = await _visible_record(request)
    body = await asyncio.to_thread(_describe, request, services, record, None)
    return web.json_response(body)


async def asset_content(request: web.Request) -> web.StreamResponse:
    """GET /api/v2/assets/{id}/content: the bytes (Range-capable) from a folder, a 307 to S3."""
    services = _services(request)
    record = await _visible_record(request)
    stored_url = await asyncio.to_thread(services.storage.url_for, record.key)
    if urlsplit(stored_url).scheme in ("http", "https"):
        # 307, not 302: a client must repeat exactly this GET (Range included) at the presigned URL.
        return web.Response(status=307, headers={hdrs.LOCATION: stored_url, hdrs.CACHE_CONTROL: "no-store"})
    path = path_from_file_uri(stored_url)
    try:
        size_bytes = (await asyncio.to_thread(path.stat)).st_size
    except FileNotFoundError:
        raise error(ASSET_NOT_FOUND, "the asset's bytes are no longer stored", asset_id=record.id) from None
    check_range(request, size_bytes)
    return web.FileResponse(path, headers={hdrs.CONTENT_TYPE: record.content_type, hdrs.CACHE_CONTROL: "private"})


async def delete_asset(request: web.Request) -> web.Response:
    """DELETE /api/v2/assets/{id}: 204 with no body; ``asset.not_found`` (404) as GET answers it.

    The whole delete (the Redis script, the blob's removal from storage, the marker's release) runs in
    one worker thread: a client that hangs up cancels only the wait for it, never a delete half done.
    """
    services = _services(request)
    asset_id = request.match_info["id"]
    deleted = await asyncio.to_thread(
        assets.delete, services.redis, services.storage, asset_id, owner=caller_owner(request),
    )
    if not deleted:
        raise error(ASSET_NOT_FOUND, "no asset with this id exists for the caller", asset_id=asset_id[:80])
    return web.Response(status=204)

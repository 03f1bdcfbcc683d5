"""A private app that serves only the asset routes, over real Redis and real storage, on a loopback
port in a thread of its own; the tests talk to it over HTTP like any client. Given a key ring it
authenticates every request with it, as the gateway's auth middleware does, so that callers are owners."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis as redis_lib
from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.asset_http import Handler, envelope
from gateway.asset_routes import ASSET_SERVICES, AssetServices, add_asset_routes
from gateway.auth import KeyRing
from gateway.context import PRINCIPAL
from producer.errors import DanceError
from tests.support.processes import free_port
from worker.storage import Storage

#: How long the app may take to start or stop, in seconds.
SERVE_TIMEOUT_S = 30.0
#: How long stopping waits for requests still in flight, in seconds.
SHUTDOWN_TIMEOUT_S = 2.0
#: Timeout of one HTTP call in the asset tests, in seconds.
HTTP_TIMEOUT_S = 30.0


def keyed(keys: KeyRing) -> Middleware:
    """A middleware that puts the principal of the request's bearer key on it (401 envelope for none)."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            request[PRINCIPAL] = keys.authenticate(request.headers.get("Authorization"))
        except DanceError as exc:
            return envelope(exc)
        return await handler(request)

    return authenticate


def asset_app(
    redis: redis_lib.Redis, storage: Storage, *, spool_dir: Path, max_upload_bytes: int, keys: KeyRing | None = None,
) -> web.Application:
    """An app of only the asset routes, over the given Redis and storage, keyed by ``keys`` if given."""
    app = web.Application(middlewares=[] if keys is None else [keyed(keys)])
    app[ASSET_SERVICES] = AssetServices(redis, storage, max_upload_bytes=max_upload_bytes, spool_dir=spool_dir)
    add_asset_routes(app)
    return app


class ServedAssets:
    """The asset routes served at ``base_url`` until ``stop``."""

    def __init__(self, app: web.Application, *, spool_dir: Path) -> None:
        self.spool_dir = spool_dir
        # A short shutdown: a test that left a connection mid-request must not hold up the next one.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        self._port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="asset-routes", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> ServedAssets:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(SERVE_TIMEOUT_S)
        return self

    async def _serve(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self._port).start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(SERVE_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(SERVE_TIMEOUT_S)
        self._loop.close()


@contextmanager
def served_assets(
    redis: redis_lib.Redis, storage: Storage, tmp_path: Path, *, max_upload_bytes: int, keys: KeyRing | None = None,
) -> Iterator[ServedAssets]:
    """The asset routes over ``redis`` and ``storage`` served for the ``with`` block, spooling to tmp_path/spool."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    served = ServedAssets(
        asset_app(redis, storage, spool_dir=spool_dir, max_upload_bytes=max_upload_bytes, keys=keys),
        spool_dir=spool_dir,
    ).start()
    try:
        yield served
    finally:
        served.stop()


def pattern(total_bytes: int) -> bytes:
    block = bytes(range(251))
    return (block * (total_bytes // len(block) + 1))[:total_bytes]


def upload(base_url: str, data: bytes, *, fields: dict[str, str] | None = None, filename: str = "a.png",
           part_type: str = "image/png", headers: dict[str, str] | None = None) -> httpx.Response:
    form = {"content_type": part_type, "file_path": filename, **(fields or {})}
    return httpx.post(
        f"{base_url}/api/v2/assets", data=form, files={"file": (filename, data, part_type)}, timeout=HTTP_TIMEOUT_S,
        headers=headers,
    )


def leftovers(redis: redis_lib.Redis, gateway: ServedAssets) -> tuple[list[bytes], list[Path]]:
    """What a failed upload could leave: asset keys in Redis and files in the spool folder."""
    return sorted(redis.scan_iter("dance:asset*")), sorted(gateway.spool_dir.iterdir())


def error_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"])
    envelope: dict[str, Any] = body["error"]
    return envelope

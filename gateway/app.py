"""The gateway's aiohttp application: ``make_app(settings)``, and ``run_gateway`` behind ``dance gateway``.

Any number of apps may run at once, on different ports, against one Redis: each builds its own producer
client and keeps nothing of its own (gateway/context.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from gateway.asset_routes import add_asset_routes
from gateway.asset_sweeper import add_asset_sweeper
from gateway.auth import KeyRing, check_bind, load_keys
from gateway.context import CONTEXT, PRINCIPAL, GatewayContext, context_of, subscriber_for
from gateway.envelope import Handler, make_error_middleware
from gateway.events import job_events
from gateway.job_index import JobIndex
from gateway.jobs_routes import add_jobs_routes
from gateway.openapi import openapi_document
from gateway.runpod_routes import add_runpod_routes
from gateway.settings import GatewaySettings
from producer.client import DanceClient

log = logging.getLogger(__name__)

#: Routes that need no API key: health checks and the API description.
PUBLIC_PATHS = frozenset({"/api/v2/health", "/api/v2/openapi.json"})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route but the public ones needs a known bearer key; the principal rides on the request."""
    ctx = context_of(request)
    if request.path in PUBLIC_PATHS or (request.path.startswith("/v2/") and request.path.endswith("/health")):
        request[PRINCIPAL] = None
    else:
        request[PRINCIPAL] = ctx.keys.authenticate(request.headers.get("Authorization"))
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    """200 while the broker answers, 503 (service_unavailable) when it does not."""
    ctx = context_of(request)
    await ctx.call(lambda: ctx.client._guard(ctx.client.redis.ping))
    return web.json_response({"status": "healthy", "auth": ctx.keys.enabled})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def make_app(settings: GatewaySettings, keys: KeyRing | None = None) -> web.Application:
    """The gateway for ``settings``; ``keys`` defaults to those the settings name (file and inline)."""
    ring = keys if keys is not None else load_keys(settings.keys_file, settings.api_keys)
    # Reading the body is the routes' job (limits.read_json_object answers 413 in the envelope); this cap
    # only bounds aiohttp's own buffered reads.
    app = web.Application(middlewares=[make_error_middleware(settings.retry_after_s), auth_middleware],
                          client_max_size=settings.max_body_bytes)
    client = DanceClient(settings.producer)
    app[CONTEXT] = GatewayContext(settings, client, ring, JobIndex(client.redis),
                                  subscriber_for(settings.producer.result_backend))
    app.cleanup_ctx.append(_resources)
    app.add_routes([web.get("/api/v2/health", health), web.get("/api/v2/openapi.json", openapi)])
    add_jobs_routes(app, job_events)
    add_runpod_routes(app)
    add_asset_routes(app)
    add_asset_sweeper(app, settings.sweep_interval_s, app[CONTEXT].call)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CONTEXT]
    # asyncio's default executor has min(32, CPUs + 4) threads: a handful of slow Redis answers would stall
    # every route on a small host, so the gateway sizes its own.
    executor = ThreadPoolExecutor(max_workers=ctx.settings.threads, thread_name_prefix="gateway")
    asyncio.get_running_loop().set_default_executor(executor)
    yield
    if ctx.subscriber is not None:
        await ctx.subscriber.aclose()
    ctx.client.close()
    executor.shutdown(wait=False, cancel_futures=True)


def run_gateway(settings: GatewaySettings) -> None:
    """Serve until interrupted; refuses (gateway.bind_refused) a non-loopback bind without keys."""
    keys = load_keys(settings.keys_file, settings.api_keys)
    check_bind(settings.host, keys)
    log.info("gateway on http://%s:%d (%s)", settings.host, settings.port,
             f"{len(keys.names)} API keys: {', '.join(keys.names)}" if keys.enabled else "no API keys, loopback only")
    web.run_app(make_app(settings, keys), host=settings.host, port=settings.port, print=None,
                access_log_format='%a "%r" %s %b %Tfs')

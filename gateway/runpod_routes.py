"""The old endpoint's RunPod-shaped API for dance jobs, so that its callers change only their base URL.

``POST /v2/{endpoint}/run`` with the old body ``{"input": {...}}`` answers ``{"id", "status"}``;
``GET /v2/{endpoint}/status/{id}`` answers the state as IN_QUEUE / IN_PROGRESS / COMPLETED / FAILED /
CANCELLED with the result under ``output``; ``/runsync`` waits up to DANCE_GATEWAY_RUNSYNC_WAIT_S for the
end first; ``/cancel/{id}`` and ``/health`` complete the set. The endpoint id picks a queue through
DANCE_GATEWAY_ENDPOINT_QUEUES, else the key's default queue. HTTP errors use the v2 error envelope.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web

from gateway.context import GatewayContext, context_of, principal_of
from gateway.events import snapshots
from gateway.job_index import KIND_DANCE, JobRecord
from gateway.jobview import Snapshot, read_snapshot, runpod_job
from gateway.limits import queue_depth, read_json_object
from producer.clusterview import worker_views
from producer.errors import GATEWAY_UNSUPPORTED, REQUEST_BAD_MEDIA_REF, error
from producer.schema import parse_request

#: Media schemes an HTTP caller may name: the gateway never reads files of its own host for a caller.
REMOTE_MEDIA_SCHEMES = ("http://", "https://", "s3://")


def check_remote_media(body: dict[str, Any]) -> None:
    """Validate the dance request and refuse local paths and file:// media (they would name gateway files)."""
    request = parse_request(body)
    for name in ("reference_image", "dance_video"):
        value = getattr(request, name)
        if not value.lower().startswith(REMOTE_MEDIA_SCHEMES):
            raise error(REQUEST_BAD_MEDIA_REF, f"'{name}' must be an http(s) URL or s3:// URI over HTTP", field=name)


async def _submit(request: web.Request) -> tuple[GatewayContext, JobRecord]:
    ctx = context_of(request)
    principal = principal_of(request)
    body = await read_json_object(request, ctx.settings.max_body_bytes)
    extra = sorted(set(body) - {"input"})
    if extra:
        raise error(GATEWAY_UNSUPPORTED, f"this endpoint takes only 'input', not {', '.join(extra)}", fields=extra)
    check_remote_media(body)
    endpoint = request.match_info["endpoint"]
    queue = principal.queue(ctx.settings.queue_for_endpoint(endpoint), ctx.client.settings.default_queue)
    job_id = uuid.uuid4().hex
    record = await ctx.submit_claimed(principal, job_id, queue, KIND_DANCE,
                                      lambda: ctx.client.submit(body, job_id=job_id, queue=queue))
    return ctx, record


async def run(request: web.Request) -> web.Response:
    _, record = await _submit(request)
    return web.json_response({"id": record.id, "status": "IN_QUEUE"})


async def runsync(request: web.Request) -> web.Response:
    """Submit, then wait (bounded) for the end; a job still going answers its IN_QUEUE/IN_PROGRESS status."""
    ctx, record = await _submit(request)
    last: Snapshot | None = None
    async for snapshot in snapshots(ctx, record.id, deadline_s=time.monotonic() + ctx.settings.runsync_wait_s):
        last = snapshot or last
    if last is None:
        last = await ctx.call(lambda: read_snapshot(ctx.client, record.id))
    return web.json_response(runpod_job(record, last))


async def status(request: web.Request) -> web.Response:
    ctx = context_of(request)
    record = await ctx.owned_job(principal_of(request), request.match_info["id"])
    snapshot = await ctx.call(lambda: read_snapshot(ctx.client, record.id))
    return web.json_response(runpod_job(record, snapshot))


async def cancel(request: web.Request) -> web.Response:
    ctx = context_of(request)
    record = await ctx.owned_job(principal_of(request), request.match_info["id"])
    await ctx.call(lambda: ctx.client.job(record.id).cancel())
    snapshot = await ctx.call(lambda: read_snapshot(ctx.client, record.id))
    return web.json_response(runpod_job(record, snapshot))


async def health(request: web.Request) -> web.Response:
    """Queue depth and the endpoint queue's workers, in RunPod's ``{"jobs", "workers"}`` shape."""
    ctx = context_of(request)
    # Public, like /api/v2/health: it names the endpoint's queue, never a key's.
    queue = ctx.settings.queue_for_endpoint(request.match_info["endpoint"]) or ctx.client.settings.default_queue

    def read() -> dict[str, Any]:
        workers = [w for w in worker_views(ctx.client.redis, None) if queue in w.queues]
        ready = [w for w in workers if w.ready]
        running = sum(1 for w in ready if w.busy)
        return {"jobs": {"inQueue": queue_depth(ctx.client.redis, queue), "inProgress": running},
                "workers": {"idle": len(ready) - running, "running": running,
                            "initializing": len(workers) - len(ready)},
                "queue": queue}

    return web.json_response(await ctx.call(lambda: ctx.client._guard(read)))


def add_runpod_routes(app: web.Application) -> None:
    app.add_routes([
        web.post("/v2/{endpoint}/run", run),
        web.post("/v2/{endpoint}/runsync", runsync),
        web.get("/v2/{endpoint}/status/{id}", status),
        web.post("/v2/{endpoint}/cancel/{id}", cancel),
        web.get("/v2/{endpoint}/health", health),
    ])

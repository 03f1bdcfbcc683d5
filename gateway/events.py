"""A job's live state for the SSE route and /runsync: pushed by Redis pub/sub, with a poll as backstop.

Celery's Redis result backend writes every state change with ``SETEX`` + ``PUBLISH`` on a channel named
like the meta key (``celery-task-meta-<id>``; celery/backends/redis.py ``RedisBackend._set``), so a
subscriber hears each STARTED/PROGRESS/SUCCESS/FAILURE/REVOKED write as it happens. The feed subscribes
*before* it reads the current state, so no write falls between the two. A cancel request changes no
state (the job stays STARTED until the worker ends it REVOKED), and a Sentinel backend or a dropped
subscription would hear nothing: a read every ``sse_poll_interval_s`` covers all three.

The v2 stream carries no cursor (the contract's SSE has no ``id:``/Last-Event-ID resume): every connect
starts with a full snapshot (``status``, then ``progress`` while running), so a client that reconnects,
to this gateway or another, loses nothing it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import redis
from aiohttp import web

from gateway.context import GatewayContext, base_url, context_of, principal_of
from gateway.job_index import JobRecord
from gateway.jobview import TERMINAL, Snapshot, read_snapshot, snapshot_from_meta, v2_error, v2_outputs, v2_progress

log = logging.getLogger(__name__)

#: SSE headers: no caching, and no buffering by a proxy in front (nginx honours X-Accel-Buffering).
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def snapshots(ctx: GatewayContext, job_id: str,
                    deadline_s: float | None = None) -> AsyncIterator[Snapshot | None]:
    """The job's snapshot now, then one per change; None whenever ``sse_keepalive_s`` passed without one.

    Ends after a terminal snapshot, or at ``deadline_s`` (monotonic) when given.
    """
    feed = _Feed(ctx, job_id)
    await feed.subscribe()
    try:
        last = await feed.read()
        yield last
        quiet_since = last_read = time.monotonic()
        interval_s, keepalive_s = ctx.settings.sse_poll_interval_s, ctx.settings.sse_keepalive_s
        while last.status not in TERMINAL and (deadline_s is None or time.monotonic() < deadline_s):
            # Wake for whichever comes first: a published write, the next poll, a keep-alive, the deadline.
            wake = min(last_read + interval_s, quiet_since + keepalive_s,
                       deadline_s if deadline_s is not None else float("inf"))
            current = await feed.heard(wake - time.monotonic(), last)
            if current is None and time.monotonic() >= last_read + interval_s:
                current, last_read = await feed.read(), time.monotonic()
            if current is not None and current != last:
                last, quiet_since = current, time.monotonic()
                yield current
            elif time.monotonic() - quiet_since >= ctx.settings.sse_keepalive_s:
                quiet_since = time.monotonic()
                yield None
    finally:
        await feed.close()


class _Feed:
    """One job's pub/sub subscription (when the backend offers one) and its reads."""

    def __init__(self, ctx: GatewayContext, job_id: str) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.pubsub: Any = None

    async def subscribe(self) -> None:
        if self.ctx.subscriber is None:
            return
        try:
            self.pubsub = self.ctx.subscriber.pubsub(ignore_subscribe_messages=True)
            await self.pubsub.subscribe(self.ctx.client.app.backend.get_key_for_task(self.job_id))
        except (redis.RedisError, OSError) as exc:
            log.warning("job %s events: pub/sub unavailable (%s); polling", self.job_id, type(exc).__name__)
            await self.close()

    async def read(self) -> Snapshot:
        return await self.ctx.call(lambda: read_snapshot(self.ctx.client, self.job_id))

    async def heard(self, timeout_s: float, last: Snapshot) -> Snapshot | None:
        """The state write published within ``timeout_s``, or None (no pub/sub: just the wait)."""
        timeout_s = max(0.0, timeout_s)
        if self.pubsub is None:
            await asyncio.sleep(timeout_s)
            return None
        try:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout_s)
        except (redis.RedisError, OSError) as exc:
            log.warning("job %s events: pub/sub dropped (%s); polling", self.job_id, type(exc).__name__)
            await self.close()
            return None
        if message is None or message.get("type") != "message":
            return None
        # A cancel request and a start write no state, so both are carried over; the next poll refreshes them.
        return snapshot_from_meta(self.ctx.client.app.backend.decode_result(message["data"]), last.cancel_requested,
                                  last.started_at)

    async def close(self) -> None:
        if self.pubsub is not None:
            pubsub, self.pubsub = self.pubsub, None
            with contextlib.suppress(redis.RedisError, OSError):
                await pubsub.aclose()


def frames_between(previous: Snapshot | None, current: Snapshot, record: JobRecord, base: str) -> list[bytes]:
    """The SSE events that take a client from ``previous`` (None: nothing seen) to ``current``."""
    frames: list[bytes] = []
    progress = v2_progress(current)
    if progress is not None and (previous is None or progress != v2_progress(previous)):
        frames.append(sse_frame("progress", progress))
    if previous is not None and current.status == previous.status:
        return frames
    if current.status == "succeeded":
        frames += [sse_frame("output", output) for output in v2_outputs(record, current, base)]
    failure = v2_error(current)
    if failure is not None:
        frames.append(sse_frame("error", failure))
    status = sse_frame("status", {"status": current.status, "queue_position": None})
    # The status comes first on connect (the snapshot), last on a change (after the outputs it announces).
    return [status, *frames] if previous is None else [*frames, status]


def sse_frame(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def job_events(request: web.Request) -> web.StreamResponse:
    """GET /api/v2/jobs/{id}/events: status, progress, output and error events until the job ends."""
    ctx = context_of(request)
    record = await ctx.owned_job(principal_of(request), request.match_info["id"])
    response = web.StreamResponse(status=200, headers=SSE_HEADERS)
    await response.prepare(request)
    base = base_url(request)
    previous: Snapshot | None = None
    try:
        async for snapshot in snapshots(ctx, record.id):
            if snapshot is None:
                await response.write(b": keep-alive\n\n")
                continue
            for frame in frames_between(previous, snapshot, record, base):
                await response.write(frame)
            previous = snapshot
    except ConnectionResetError:
        # The client went away: nothing to tell it. Its next connect starts with a full snapshot.
        return response
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


"""Request-size caps and the queue-depth cap, checked before anything is claimed or queued."""

from __future__ import annotations

import json
from typing import Any

import redis
from aiohttp import web

from producer.celeryconf import PRIORITY_SEPARATOR, PRIORITY_STEPS
from producer.errors import GATEWAY_BODY_TOO_LARGE, GATEWAY_INVALID_BODY, GATEWAY_QUEUE_FULL, error


async def read_json_object(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object: 413 past ``max_bytes`` (read no further), 400 if not an object."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise error(GATEWAY_BODY_TOO_LARGE, f"the body has {request.content_length} bytes; at most {max_bytes}",
                    max_bytes=max_bytes)
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise error(GATEWAY_BODY_TOO_LARGE, f"the body exceeds {max_bytes} bytes", max_bytes=max_bytes)
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        raise error(GATEWAY_INVALID_BODY, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise error(GATEWAY_INVALID_BODY, "the body must be a JSON object")
    return body


def queue_depth(client: redis.Redis, queue: str) -> int:
    """Messages waiting in ``queue`` over all its priority lists (kombu keeps one list per level)."""
    names = [queue] + [f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS if step]
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(name)
        return sum(int(count) for count in pipe.execute())


def check_queue_depth(client: redis.Redis, queue: str, max_depth: int, retry_after_s: int) -> None:
    """429 (with Retry-After) while ``queue`` holds ``max_depth`` jobs or more; 0 means no cap."""
    if max_depth <= 0:
        return
    depth = queue_depth(client, queue)
    if depth >= max_depth:
        raise error(GATEWAY_QUEUE_FULL, f"queue {queue!r} holds {depth} jobs (cap {max_depth})", queue=queue,
                    depth=depth, max_depth=max_depth, retry_after_s=retry_after_s)

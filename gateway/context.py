"""What every route of one gateway shares, built once by :func:`gateway.app.make_app`.

The gateway keeps no state of its own: the producer client, the job index and the keys read Redis (and
storage) on every request, so two gateways against one Redis serve the same jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from aiohttp import web

from gateway.auth import KeyRing, Principal
from gateway.job_index import JobIndex, JobRecord
from gateway.limits import check_queue_depth
from gateway.settings import GatewaySettings
from producer.client import DanceClient
from producer.errors import GATEWAY_IDEMPOTENCY_REUSE, GATEWAY_NOT_FOUND, error
from producer.redisurl import is_sentinel
from producer.schema import JOB_ID_PATTERN

T = TypeVar("T")


@dataclass
class GatewayContext:
    settings: GatewaySettings
    client: DanceClient
    keys: KeyRing
    index: JobIndex
    #: An asyncio client of the result backend for pub/sub (gateway/events.py); None: poll only.
    subscriber: aioredis.Redis | None = None

    async def call(self, blocking: Callable[[], T]) -> T:
        """Run a blocking producer call (Redis, Celery) off the event loop."""
        return await asyncio.to_thread(blocking)

    async def submit_claimed(self, principal: Principal, job_id: str, queue: str, kind: str,
                             submit: Callable[[], object], workflow: dict[str, Any] | None = None) -> JobRecord:
        """Check the queue's depth, claim ``job_id`` in the index, then ``submit``; undo the claim on any error.

        The claim is the Idempotency-Key's single use (None: used before, 422). A submit the producer
        refuses raised before anything was queued, so releasing the claim leaves nothing behind.
        """
        settings = self.settings

        def go() -> JobRecord | None:
            check_queue_depth(self.client.redis, queue, settings.max_queue_depth, settings.retry_after_s)
            record = self.index.claim(job_id, principal.name, queue, kind, workflow)
            if record is None:
                return None
            try:
                submit()
            except BaseException:
                self.index.release(record)
                raise
            return record

        record: JobRecord | None = await self.call(lambda: self.client._guard(go))
        if record is None:
            raise error(GATEWAY_IDEMPOTENCY_REUSE, "this Idempotency-Key was used before; keys are single-use: "
                        "poll or list the job it created instead", job_id=job_id)
        return record

    async def owned_job(self, principal: Principal, job_id: str) -> JobRecord:
        """The index record of a job this key submitted; 404 for any other id, another key's included."""
        record = await self.call(lambda: self.index.load(job_id)) if _plausible(job_id) else None
        if record is None or (self.keys.enabled and record.owner != principal.name):
            raise error(GATEWAY_NOT_FOUND, f"no job {job_id}", job_id=job_id)
        return record


CONTEXT: web.AppKey[GatewayContext] = web.AppKey("gateway", GatewayContext)
#: The caller's principal, put on each request by the auth middleware (None on the public routes).
PRINCIPAL: web.RequestKey[Principal | None] = web.RequestKey("gateway.principal")


def context_of(request: web.Request) -> GatewayContext:
    return request.app[CONTEXT]


def principal_of(request: web.Request) -> Principal:
    principal = request[PRINCIPAL]
    if principal is None:  # a public route asked for a principal it never has: a bug, not a client's fault
        raise RuntimeError(f"{request.path} has no principal")
    return principal


def base_url(request: web.Request) -> str:
    """The origin the caller reached us on, for the links in job bodies (no X-Forwarded-* trust)."""
    return f"{request.scheme}://{request.host}"


def _plausible(job_id: str) -> bool:
    return JOB_ID_PATTERN.fullmatch(job_id) is not None


def subscriber_for(url: str) -> aioredis.Redis | None:
    """An asyncio client of the result backend for pub/sub; None for Sentinel URLs (those poll only)."""
    return None if is_sentinel(url) else aioredis.Redis.from_url(url)

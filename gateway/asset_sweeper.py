"""The gateway's periodic sweep of blobs whose every asset expired (producer/asset_sweep.py).

Every ``DANCE_GATEWAY_SWEEP_INTERVAL_S`` a gateway takes the sweep lock (``SET NX EX`` on
``dance:asset-sweep-lock`` with a token of its own) and, if it got it, sweeps in a thread of its
offload, then releases the lock only if it still holds its token. The lock spares several gateways
sweeping the same storage at once; it is not what makes a sweep safe (each blob's decision is one Redis
script and a deleting marker), so a lock that expires under a long sweep costs only doubled work. A
failed sweep is logged with its code and retried at the next interval; it never stops the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import redis as redis_lib
from aiohttp import web

from gateway.asset_routes import ASSET_SERVICES, AssetServices
from producer import keys
from producer.asset_blobs import release_token
from producer.asset_sweep import SweepReport, sweep
from producer.errors import BROKER_UNREACHABLE, DanceError

log = logging.getLogger(__name__)

#: Redis key of the lock that one sweeping gateway holds (its token).
SWEEP_LOCK_KEY = f"{keys.PREFIX}:asset-sweep-lock"
#: How long the sweep lock lives unless released, in seconds: longer than a sweep of a large store
#: takes, and short enough that a gateway killed mid-sweep does not hold up the others for long.
SWEEP_LOCK_TTL_S = 900

#: The code logged for a sweep that failed on something other than a DanceError or Redis (a bug); the
#: envelope's code for the same on a route.
SWEEP_INTERNAL_CODE = "internal_error"

Offload = Callable[[Callable[[], Any]], Coroutine[Any, Any, Any]]


def sweep_if_free(
    services: AssetServices, *, should_stop: Callable[[], bool] = lambda: False,
) -> SweepReport | None:
    """Sweep under the lock; None (nothing done) while another gateway holds it."""
    token = uuid.uuid4().hex
    if not services.redis.set(SWEEP_LOCK_KEY, token, nx=True, ex=SWEEP_LOCK_TTL_S):
        log.info("asset sweep skipped: another gateway holds %s", SWEEP_LOCK_KEY)
        return None
    try:
        return sweep(services.redis, services.storage, should_stop=should_stop)
    finally:
        release_token(services.redis, SWEEP_LOCK_KEY, token)


def add_asset_sweeper(app: web.Application, interval_s: float, offload: Offload) -> None:
    """Sweep every ``interval_s`` seconds (0: never) while the app runs, through ``offload`` (a thread).

    Call it after :func:`gateway.asset_routes.add_asset_routes`: it sweeps the storage and Redis those
    routes use.
    """
    if interval_s <= 0:
        return

    async def sweeping(app: web.Application) -> AsyncIterator[None]:
        stopping = asyncio.Event()
        stop_thread = threading.Event()
        task = asyncio.create_task(_sweep_forever(app[ASSET_SERVICES], interval_s, offload, stopping, stop_thread))
        yield
        # The sweep in flight finishes its batch (its markers released) and then stops.
        stopping.set()
        stop_thread.set()
        await task

    app.cleanup_ctx.append(sweeping)


async def _sweep_forever(
    services: AssetServices, interval_s: float, offload: Offload, stopping: asyncio.Event,
    stop_thread: threading.Event,
) -> None:
    while not await _stopped_within(stopping, interval_s):
        try:
            await offload(lambda: sweep_if_free(services, should_stop=stop_thread.is_set))
        except DanceError as exc:
            log.warning("asset sweep failed (%s): %s", exc.code, exc)
        except redis_lib.RedisError as exc:
            log.warning("asset sweep failed (%s): %s: %s", BROKER_UNREACHABLE, type(exc).__name__, exc)
        except Exception:
            # A bug, not the world: logged with its traceback, and the next interval tries again rather
            # than this gateway quietly never sweeping again.
            log.exception("asset sweep failed (%s)", SWEEP_INTERNAL_CODE)


async def _stopped_within(stopping: asyncio.Event, interval_s: float) -> bool:
    """Wait up to ``interval_s`` seconds; whether the app began to stop meanwhile."""
    try:
        await asyncio.wait_for(stopping.wait(), interval_s)
    except TimeoutError:
        return False
    return True

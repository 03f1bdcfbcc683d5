"""Keep live jobs' messages fresh, so a short visibility timeout brings a dead worker's job back fast.

kombu's Redis transport redelivers an unacked message once its ``unacked_index`` score is older than the
visibility timeout (celery#5935: a job that outlives it ping-pongs between workers, and a stale ack then
deletes the live delivery's entry: celery-on-redis.md §3). Every ``visibility_timeout_s / 4`` this step
bumps the score of every message the worker holds (``ZADD XX``: only if still present) and renews the
execution leases (worker/leases.py). A SIGKILLed or OOM-killed worker stops refreshing, so its job is
redelivered within the visibility timeout plus one restore sweep, instead of after an hour.

Relies on kombu-internal names (``unacked_index_key``, ``conn_or_acquire``): kombu is pinned to 5.7.x and
the tests exercise the refresh against a real Redis.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import bootsteps
from celery.worker import state as worker_state

from worker.runtime import Runtime

log = logging.getLogger(__name__)

#: Refreshes per visibility timeout: three may be missed before a live job looks dead.
REFRESHES_PER_TIMEOUT = 4


class LeaseRefresher(bootsteps.StartStopStep):
    """Consumer step: refresh the unacked entries of held messages and renew execution leases."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.timer_ref: Any = None

    def start(self, c: Any) -> None:
        runtime = Runtime.current(c.app)
        interval_s = runtime.settings.visibility_timeout_s / REFRESHES_PER_TIMEOUT
        # Reconnects restart consumer steps, so the timer is made anew on every start.
        self.timer_ref = c.timer.call_repeatedly(interval_s, self.refresh, (c,), priority=10)

    def stop(self, c: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None

    def refresh(self, c: Any) -> None:
        runtime = Runtime.current(c.app)
        try:
            refresh_unacked(c)
            runtime.leases.renew_all()
        except redis.RedisError as exc:
            # The broker is away; kombu reconnects, and this step restarts with the consumer.
            log.warning("lease refresh failed: %s", exc)


def refresh_unacked(c: Any) -> int:
    """Bump the ``unacked_index`` score of every message this worker holds; returns how many were found."""
    channel = c.task_consumer.channel if c.task_consumer is not None else None
    tags = [request.message.delivery_tag for request in list(worker_state.reserved_requests)
            if getattr(request, "message", None) is not None]
    if channel is None or not tags:
        return 0
    now = time.time()
    with channel.conn_or_acquire() as client:  # the channel's client applies global_keyprefix
        pipe = client.pipeline()
        for tag in tags:
            pipe.zadd(channel.unacked_index_key, {tag: now}, xx=True)
        pipe.execute()
    return len(tags)

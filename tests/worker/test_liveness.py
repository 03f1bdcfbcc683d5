"""The liveness check tells a stuck consumer from a busy or gated one, on a real kombu channel."""

from __future__ import annotations

import contextlib
import time
from types import SimpleNamespace
from typing import Any

from kombu import Connection, Consumer, Queue

from worker.liveness import STALL_S, consumption_stalled


def consuming_channel(broker_url: str) -> tuple[Any, Any, Connection]:
    connection = Connection(broker_url)
    channel = connection.channel()
    consumer = Consumer(channel, [Queue("liveness-probe")], accept=["json"])
    consumer.consume()
    # One poll round sends a BRPOP on the channel, as the worker's event loop does.
    with contextlib.suppress(TimeoutError):
        connection.drain_events(timeout=0.2)
    return consumer, channel, connection


def test_a_consumer_that_just_polled_is_not_stalled(redis_db: str) -> None:
    consumer, channel, connection = consuming_channel(redis_db)
    try:
        assert channel._brpop_sent_at is not None
        assert not consumption_stalled(SimpleNamespace(task_consumer=consumer))
    finally:
        connection.release()


def test_a_consumer_with_room_that_sent_no_brpop_for_the_stall_period_is_stalled(redis_db: str) -> None:
    consumer, channel, connection = consuming_channel(redis_db)
    try:
        later = channel._brpop_sent_at + STALL_S + 1
        assert consumption_stalled(SimpleNamespace(task_consumer=consumer), now=later)
    finally:
        connection.release()


def test_a_gated_worker_is_not_stalled_however_long_it_waits(redis_db: str) -> None:
    consumer, _channel, connection = consuming_channel(redis_db)
    try:
        consumer.cancel_by_queue("liveness-probe")
        later = time.monotonic() + STALL_S * 10
        assert not consumption_stalled(SimpleNamespace(task_consumer=consumer), now=later)
    finally:
        connection.release()

"""worker/ownership/kombu_compat.py against the pinned kombu and a real Redis: fails if an upgrade moves
what it relies on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue

from worker.ownership.kombu_compat import UNACKED_INDEX_KEY, UNACKED_KEY, HeldMessage, UnackedIndex, held_message


@pytest.fixture
def delivered(redis_db: str) -> Iterator[tuple[Any, HeldMessage]]:
    """One message published and received, not acknowledged, through kombu's own Redis transport."""
    queue = Queue("compat", Exchange("compat"), routing_key="compat")
    with Connection(redis_db) as connection:
        with connection.Producer() as producer:
            producer.publish({"job": "compat-1"}, exchange=queue.exchange, routing_key="compat",
                             declare=[queue], priority=5)
        received: list[Any] = []
        with connection.Consumer(queue, callbacks=[lambda _body, message: received.append(message)]):
            connection.drain_events(timeout=10)
        held = held_message(received[0])
        assert held is not None
        yield received[0], held


def test_a_held_messages_entry_is_exactly_what_kombu_stored_for_it(delivered: tuple[Any, HeldMessage],
                                                                    redis_db: str) -> None:
    # Given a message kombu delivered and holds unacknowledged
    message, _ = delivered
    broker = redis.Redis.from_url(redis_db)
    # When the heartbeat's view of it is built
    held = held_message(message)
    # Then its tag and entry match kombu's own bookkeeping byte for byte, under the names kombu uses
    assert held is not None and held.entry is not None
    assert broker.hget(UNACKED_KEY, held.delivery_tag) == held.entry.encode()
    assert broker.zscore(UNACKED_INDEX_KEY, held.delivery_tag) is not None


def test_an_entry_deleted_by_a_stale_ack_is_put_back_and_kombu_can_restore_it(
    delivered: tuple[Any, HeldMessage], redis_db: str
) -> None:
    # Given a held message whose unacked entry a superseded copy's ack deleted (same delivery tag)
    message, held = delivered
    broker = redis.Redis.from_url(redis_db)
    broker.hdel(UNACKED_KEY, held.delivery_tag)
    broker.zrem(UNACKED_INDEX_KEY, held.delivery_tag)
    # When the heartbeat keeps it
    UnackedIndex(broker).keep([held], [], now_s=1.0)
    # Then the entry is back, and kombu's own sweep restores it to its queue as it would any expired message
    assert UnackedIndex(broker).present(held.delivery_tag)
    message.channel.qos.restore_visible(num=10, interval=1)
    assert not broker.hexists(UNACKED_KEY, held.delivery_tag)
    lists = [key for key in broker.keys("compat*") if broker.type(key) == b"list"]
    assert sum(broker.llen(key) for key in lists) == 1


def test_messages_the_worker_holds_without_owning_are_only_refreshed_never_recreated(
    delivered: tuple[Any, HeldMessage], redis_db: str
) -> None:
    # Given a held message and a tag kombu no longer tracks
    _, held = delivered
    broker = redis.Redis.from_url(redis_db)
    # When both are kept as "others"
    UnackedIndex(broker).keep([], [held.delivery_tag, "gone-tag"], now_s=42.0)
    # Then the live one's score moves and the other is not invented
    assert broker.zscore(UNACKED_INDEX_KEY, held.delivery_tag) == 42.0
    assert broker.zscore(UNACKED_INDEX_KEY, "gone-tag") is None

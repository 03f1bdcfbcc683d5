"""The one place that knows how kombu's Redis transport records a message a worker holds.

kombu 5.7 (pinned in pyproject) keeps every delivered, unacknowledged message in two keys of the broker's
database (``kombu/transport/redis.py`` ``QoS.append``):

* ``unacked`` (a hash): delivery tag -> JSON ``[raw message, exchange, routing key]``, what a restore
  pushes back onto the queue;
* ``unacked_index`` (a sorted set): delivery tag -> delivery time; a sweep of any consuming worker restores
  entries older than the visibility timeout (celery#5935: a job that outlives it ping-pongs).

The heartbeat (worker/ownership/heartbeat.py) uses both, on its own connection, for the messages this worker
holds: it bumps the score so no sweep presumes a live job dead, and it puts the hash entry back when it is
missing. The entry goes missing when a superseded copy of the message is acknowledged (a delivery tag is
stable across redeliveries, so that copy's ack deletes the live delivery's entry: docs/celery-on-redis.md)
or when kombu restored the message on a broker connection loss; without the entry, a worker that dies
later would leave its job in no queue at all. Both keys carry the transport's ``global_keyprefix``.

tests/worker/test_ownership_kombu.py fails if a kombu upgrade changes any of this.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis
from kombu.utils.json import dumps

#: kombu's names for the two keys (``Channel.unacked_key`` and ``Channel.unacked_index_key``).
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
#: HSETNX + ZADD NX of one entry, only while the job's lease key exists.
_KEEP_WHILE_LEASED = """
if redis.call('exists', KEYS[3]) == 1 then
  redis.call('hsetnx', KEYS[1], ARGV[1], ARGV[2])
  redis.call('zadd', KEYS[2], 'NX', ARGV[3], ARGV[1])
end
return 0
"""


@dataclass(frozen=True)
class HeldMessage:
    """What the heartbeat needs of one message: its delivery tag and its ``unacked`` hash value."""

    delivery_tag: str
    #: The exact value kombu stored for it; None when the message object does not carry it.
    entry: str | None


def held_message(message: Any) -> HeldMessage | None:
    """The delivery tag and ``unacked`` value of a kombu Redis message, or None for another transport."""
    tag = getattr(message, "delivery_tag", None)
    raw = getattr(message, "_raw", None)  # kombu.transport.virtual.Message keeps the payload it was built from
    info = getattr(message, "delivery_info", None) or {}
    if not tag:
        return None
    if raw is None or "exchange" not in info or "routing_key" not in info:
        return HeldMessage(str(tag), None)
    return HeldMessage(str(tag), dumps([raw, info["exchange"], info["routing_key"]]))  # type: ignore[no-untyped-call]


class UnackedIndex:
    """Writes to kombu's ``unacked`` bookkeeping for messages this worker still holds."""

    def __init__(self, client: redis.Redis, global_keyprefix: str = "") -> None:
        self.client = client
        self.hash_key = f"{global_keyprefix}{UNACKED_KEY}"
        self.index_key = f"{global_keyprefix}{UNACKED_INDEX_KEY}"

    def keep(self, owned: list[HeldMessage], others: list[str], now_s: float | None = None) -> None:
        """Mark ``owned`` messages fresh and put back their entries if missing; only bump ``others``.

        ``others`` are messages this worker holds without owning the job (a copy still deciding, a job not
        started): their entries are refreshed only while present (``ZADD XX``), never created.
        """
        now = time.time() if now_s is None else now_s
        pipe = self.client.pipeline(transaction=False)
        for held in owned:
            if held.entry is not None:
                pipe.hsetnx(self.hash_key, held.delivery_tag, held.entry)
                pipe.zadd(self.index_key, {held.delivery_tag: now})
            else:
                pipe.zadd(self.index_key, {held.delivery_tag: now}, xx=True)
        for tag in others:
            pipe.zadd(self.index_key, {tag: now}, xx=True)
        pipe.execute()

    def keep_while_leased(self, held: HeldMessage, lease_key: str, now_s: float | None = None) -> None:
        """Put back ``held``'s entry if missing, but only while ``lease_key`` exists (the job still has an
        owner, alive or not yet expired); an entry already present keeps its score."""
        if held.entry is None:
            return
        now = time.time() if now_s is None else now_s
        self.client.eval(_KEEP_WHILE_LEASED, 3, self.hash_key, self.index_key, lease_key,
                         held.delivery_tag, held.entry, now)

    def present(self, delivery_tag: str) -> bool:
        return bool(self.client.hexists(self.hash_key, delivery_tag))


"""Publishing what this worker's ComfyUI offers, per queue it consumes (read by producer/capabilities.py).

The record comes from the gate's full readiness check (the one /object_info it fetches whenever ComfyUI
becomes ready), never from a fetch of its own. Each liveness beat renews the record's TTL and the worker's
membership of each queue's set; the record itself is serialized and written again only when the gate's
probe gave a new one or it expired (a Redis restart), since a large install's record is big and the beat,
on the event loop, is frequent. Only a ready worker
publishes: one whose ComfyUI is down stops refreshing and drops out within the TTL.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from producer import keys
from producer.capabilities import CAPABILITIES_TTL_S


class CapabilityPublisher:
    def __init__(self, client: redis.Redis, ttl_s: int = CAPABILITIES_TTL_S) -> None:
        self.client, self.ttl_s = client, ttl_s
        #: The capabilities object last serialized (the gate's probe result, replaced on each full check),
        #: the hostname it was for, and its JSON body: a beat serializes only a new probe result.
        self._source: tuple[dict[str, Any], str] | None = None
        self._body = ""

    def beat(self, hostname: str, queues: list[str], capabilities: dict[str, Any] | None) -> None:
        """Renew this worker's record and memberships; raises ``redis.RedisError``."""
        if capabilities is None or not queues:
            return
        changed = self._source is None or self._source[0] is not capabilities or self._source[1] != hostname
        if changed:
            self._body = json.dumps({"hostname": hostname, **capabilities}, sort_keys=True)
            self._source = (capabilities, hostname)
        record = keys.worker_capabilities(hostname)
        pipe = self.client.pipeline()
        pipe.expire(record, self.ttl_s)
        expires_at = time.time() + self.ttl_s
        for queue in queues:
            pipe.zadd(keys.queue_capabilities(queue), {hostname: expires_at})
            # Members whose record expired are dead workers; the set itself dies with the last of them.
            pipe.zremrangebyscore(keys.queue_capabilities(queue), "-inf", time.time())
            pipe.expire(keys.queue_capabilities(queue), self.ttl_s)
        renewed = pipe.execute()[0]
        if not renewed or changed:
            self.client.set(record, self._body, ex=self.ttl_s)

    def withdraw(self, hostname: str, queues: list[str]) -> None:
        """Drop out at once (a clean shutdown); raises ``redis.RedisError``."""
        pipe = self.client.pipeline()
        pipe.delete(keys.worker_capabilities(hostname))
        for queue in queues:
            pipe.zrem(keys.queue_capabilities(queue), hostname)
        pipe.execute()

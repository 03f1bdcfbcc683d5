"""Publishing what this worker's ComfyUI offers, per queue it consumes (read by producer/capabilities.py).

The record comes from the gate's full readiness check (the one /object_info it fetches whenever ComfyUI
becomes ready), never from a fetch of its own. Each liveness beat renews the record's TTL and the worker's
membership of each queue's set; the record itself is written again only when it changed or expired (a
Redis restart), since a large install's record is big and the beat is frequent. Only a ready worker
publishes: one whose ComfyUI is down stops refreshing and drops out within the TTL.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import redis

from producer import keys
from producer.capabilities import CAPABILITIES_TTL_S


class CapabilityPublisher:
    def __init__(self, client: redis.Redis, ttl_s: int = CAPABILITIES_TTL_S) -> None:
        self.client, self.ttl_s = client, ttl_s
        self._written: str | None = None

    def beat(self, hostname: str, queues: list[str], capabilities: dict[str, Any] | None) -> None:
        """Renew this worker's record and memberships; raises ``redis.RedisError``."""
        if capabilities is None or not queues:
            return
        body = json.dumps({"hostname": hostname, **capabilities}, sort_keys=True)
        digest = hashlib.sha256(body.encode()).hexdigest()
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
        if not renewed or digest != self._written:
            self.client.set(record, body, ex=self.ttl_s)
            self._written = digest

    def withdraw(self, hostname: str, queues: list[str]) -> None:
        """Drop out at once (a clean shutdown); raises ``redis.RedisError``."""
        pipe = self.client.pipeline()
        pipe.delete(keys.worker_capabilities(hostname))
        for queue in queues:
            pipe.zrem(keys.queue_capabilities(queue), hostname)
        pipe.execute()

"""Wake a waiting producer when its job's state changes, instead of after a fixed poll interval.

Celery's Redis result backend publishes every state it stores on a channel named like the state's key
(``celery-task-meta-<id>``: ``RedisBackend._set``). A :class:`ResultWatch` subscribes to that channel
before the waiter's first look at the state, so a change made after that look always wakes it. The
state itself is still read from the key: a message only says "look again". The poll stays as the
fallback: a watch whose subscription fails (the broker is away, the backend is not Redis) waits the whole
interval, as the waiter did before, and the waiter's own outage handling decides what happens next.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis

log = logging.getLogger(__name__)

#: Longest wait for Redis to confirm the subscription, in seconds; without it the waiter polls.
SUBSCRIBE_TIMEOUT_S = 1.0


class ResultWatch:
    """A subscription to one job's state channel; :meth:`wait` returns early when the state changes."""

    def __init__(self, backend: Any, job_id: str) -> None:
        self._pubsub: Any = None
        self._idle = threading.Event()  # never set: a watch without a subscription waits the interval
        try:
            pubsub = backend.client.pubsub()
            self._pubsub = pubsub
            pubsub.subscribe(backend.get_key_for_task(job_id))
            # Confirmed, the subscription is in place before the waiter first reads the state: a change
            # made after that read cannot go unannounced.
            confirmation = pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT_S)
        except (AttributeError, redis.RedisError) as exc:
            # Deliberate: without the notification the waiter polls, as it always did.
            log.debug("job %s: no state notifications (%s); polling", job_id, exc)
            self.close()
            return
        if confirmation is None or confirmation.get("type") != "subscribe":
            log.debug("job %s: the state subscription was not confirmed; polling", job_id)
            self.close()

    @property
    def subscribed(self) -> bool:
        return self._pubsub is not None

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a state change of the job; True if one was announced."""
        if self._pubsub is None:
            self._idle.wait(timeout_s)
            return False
        try:
            message = self._pubsub.get_message(timeout=timeout_s)
        except redis.RedisError as exc:
            log.debug("state notifications lost (%s); polling", exc)
            self.close()
            return False
        return message is not None and message.get("type") == "message"

    def close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except redis.RedisError as exc:  # deliberate: the subscription dies with its connection anyway
                log.debug("state subscription not closed cleanly: %s", exc)

    def __enter__(self) -> ResultWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

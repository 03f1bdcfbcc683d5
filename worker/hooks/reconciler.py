"""The outbox reconciler: a thread of the hooks worker that publishes every outbox entry that is due.

An entry is due when its first publish was not claimed in time (the publish was lost, the message went
with a broker restart), when a retry's backoff has passed, or when a claim expired (the hooks worker
delivering it died). Taking due entries is one Lua call that also pushes each one's due time forward by
``DANCE_WEBHOOK_REPUBLISH_AFTER_S``, so several hooks workers never publish the same entry at once and a
publish that fails here is simply retried on a later pass.

This is also how webhook retries wait: in the outbox, not as Celery ETA messages. A message with a
countdown stays reserved but unacked in the hooks worker until its time comes, and kombu's Redis
``unacked`` index is shared by the whole database: every GPU worker's restore sweep (its visibility
timeout is short, worker/app.py) would put a copy back on the queue every sweep, and each copy would fire
and schedule its own retry (celery#5935, the same redelivery that long jobs meet). Here no message lives
longer than one attempt.

The thread has its own Redis connection, so a slow pass never waits on a delivery's connection.
"""

from __future__ import annotations

import logging
import threading

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from producer import outbox

log = logging.getLogger(__name__)

#: How long stopping waits for a pass in progress, in seconds.
STOP_TIMEOUT_S = 10.0


class Reconciler:
    """Publishes due outbox entries every ``interval_s`` until stopped."""

    def __init__(self, client: redis.Redis, app: Celery, interval_s: float, republish_after_s: float) -> None:
        self.client = client
        self.app = app
        self.interval_s = interval_s
        self.republish_after_s = republish_after_s
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="dance-outbox-reconciler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(STOP_TIMEOUT_S)
        self.client.close()

    def run(self) -> None:
        while not self.stopping.wait(self.interval_s):
            # A full take means more may be due: take again at once rather than one interval later.
            while self.reconcile_once() == outbox.TAKE_LIMIT and not self.stopping.is_set():
                pass

    def reconcile_once(self) -> int:
        """Publish the entries due now; returns how many were taken (0 when Redis did not answer)."""
        try:
            entries = outbox.take_due(self.client, self.republish_after_s)
        except redis.RedisError as exc:
            log.warning("outbox reconciler: cannot read the outbox (%s); trying again in %.1fs", exc, self.interval_s)
            return 0
        for done, entry in enumerate(entries):
            try:
                outbox.publish(self.app, entry)
            except OperationalError as exc:
                # These entries are due again in republish_after_s, when a later pass publishes them.
                log.warning("outbox reconciler: cannot publish (%s); %d entries stay in the outbox",
                            exc, len(entries) - done)
                break
            log.info("outbox reconciler: published %s", entry.id)
        return len(entries)

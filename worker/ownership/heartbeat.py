"""The heartbeat: a thread of its own, on a Redis connection of its own, that keeps this worker's jobs owned.

Every ``interval_s`` (and at once when it starts) it renews the execution lease of every run that holds one
and keeps the messages this worker holds fresh in kombu's ``unacked`` bookkeeping. It used to be a consumer
timer, and Celery's warm shutdown leaves the event loop before it waits for the running job in
``pool.stop()``: during the whole drain nothing was renewed, a peer restored the message once the visibility
timeout passed and ran the job a second time (celery#5935). A thread of its own keeps beating through a
drain and through broker reconnects of the consumer, and it stops only at ``worker_shutdown``, after the
pool has drained.

While the broker is away it retries every ``retry_s`` rather than every interval, so the first beat after
a broker restart comes within ``retry_s`` of Redis answering: a lease that expired during a long outage is
taken back before a peer can restore the job's message and claim it. A run whose lease another run holds
now is fenced (worker/ownership/leases.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from producer import keys
from worker.ownership.kombu_compat import HeldMessage, UnackedIndex
from worker.ownership.leases import ExecutionLeases, Renewal
from worker.ownership.registry import Registry, Run

log = logging.getLogger(__name__)

#: Pause between two tries while the broker does not answer, in seconds.
RETRY_S = 0.5


class Heartbeat:
    def __init__(
        self, registry: Registry, leases: ExecutionLeases, index: UnackedIndex, client: redis.Redis,
        interval_s: float, held_tags: Callable[[], list[str]], retry_s: float = RETRY_S,
    ) -> None:
        self.registry, self.leases, self.index, self.client = registry, leases, index, client
        self.interval_s, self.retry_s = interval_s, min(retry_s, interval_s)
        #: Delivery tags of every message the worker holds (Celery's reserved requests).
        self.held_tags = held_tags
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dance-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        failing_since: float | None = None
        while not self._stop.is_set():
            try:
                self.beat()
            except redis.RedisError as exc:
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("heartbeat: broker unreachable (%s); retrying every %.1fs", exc, self.retry_s)
                self._stop.wait(self.retry_s)
                continue
            if failing_since is not None:
                log.warning("heartbeat: broker back after %.1fs; leases renewed",
                            time.monotonic() - failing_since)
                failing_since = None
            self._stop.wait(self.interval_s)

    def beat(self) -> None:
        """Renew every held lease and keep every held message fresh; raises ``redis.RedisError``."""
        with self.registry.beat_lock:
            owned: list[HeldMessage] = []
            for run in self.registry.runs():
                if self._renew(run) and run.message is not None:
                    owned.append(run.message)
            owned_tags = {held.delivery_tag for held in owned}
            others = [tag for tag in self.held_tags() if tag not in owned_tags]
            if owned or others:
                self.index.keep(owned, others)
            for ward in self.registry.wards():
                self.index.keep_while_leased(ward.message, keys.lease(ward.job_id))

    def _renew(self, run: Run) -> bool:
        """Renew one run's lease; whether the run still owns its job."""
        token = run.lease_token
        if token is None:
            return False
        renewal = self.leases.renew(run.job_id, token, self.client)
        if renewal is Renewal.LOST:
            log.error("job %s: another run holds its execution lease now; this run stops and writes nothing",
                      run.job_id)
            run.lease_token = None
            self.registry.fence(run)
            return False
        if renewal is Renewal.TAKEN_BACK:
            log.warning("job %s: its execution lease was gone (the broker was away for longer than its TTL, "
                        "or a failover promoted a replica that lacked it); nobody held it, so this run took it back",
                        run.job_id)
        return True

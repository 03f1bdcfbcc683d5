"""The execution lease: at most one run of a job uses a GPU at a time.

``dance:job:<id>:lease`` holds the token of the run that may execute the job, with a TTL that the
worker's event loop renews (worker/refresher.py). A redelivered copy of a job whose lease is still held
waits instead of running a second time on another GPU; it takes over only when the lease expires (the
holder died) and returns the manifest if the holder finished.
"""

from __future__ import annotations

import logging
import threading
import uuid

import redis

from producer import keys

log = logging.getLogger(__name__)

#: Extend the lease only if it is still ours (a compare-and-expire).
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
#: Delete the lease only if it is still ours.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class ExecutionLeases:
    """The execution leases this worker holds, renewed together from the event loop."""

    def __init__(self, client: redis.Redis, ttl_s: float) -> None:
        self.client = client
        self.ttl_ms = int(ttl_s * 1000)
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()

    def try_acquire(self, job_id: str, holder: str) -> bool:
        token = f"{holder}:{uuid.uuid4().hex[:12]}"
        if not self.client.set(keys.lease(job_id), token, nx=True, px=self.ttl_ms):
            return False
        with self._lock:
            self._held[job_id] = token
        return True

    def holder(self, job_id: str) -> str | None:
        value = self.client.get(keys.lease(job_id))
        return value.decode() if isinstance(value, bytes) else value

    def release(self, job_id: str) -> None:
        with self._lock:
            token = self._held.pop(job_id, None)
        if token is not None:
            self.client.eval(_RELEASE, 1, keys.lease(job_id), token)

    def renew_all(self) -> None:
        with self._lock:
            held = list(self._held.items())
        for job_id, token in held:
            if not self.client.eval(_RENEW, 1, keys.lease(job_id), token, self.ttl_ms):
                # Someone else holds it now: we were presumed dead. The job's own checks stop it.
                log.error("execution lease of job %s was lost", job_id)

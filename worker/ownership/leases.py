"""The execution lease: at most one run of a job uses a GPU at a time, and a run that lost it writes nothing.

``dance:job:<id>:lease`` holds the token of the one run that may execute the job, with a TTL the heartbeat
renews (worker/ownership/heartbeat.py) on a thread of its own, so neither a warm shutdown nor a broker
reconnect stops the renewals. The token is the fence: the run checks it before every write that makes the
job's result (outputs, manifest), and the manifest itself is written only if absent, so a run that was
presumed dead and superseded can never overwrite the live run's result.

A lease that expired while its run was alive (the broker was away for longer than the TTL) is taken back by
that run's next renewal if nobody took it meanwhile; if another run holds it, the old run is fenced: it
stops its prompt and ends without writing.
"""

from __future__ import annotations

import logging
import uuid
from enum import Enum

import redis

from producer import keys

log = logging.getLogger(__name__)

#: Renew the lease if it is ours, take it back if nobody holds it; 1 renewed, 2 taken back, 0 lost.
_RENEW = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
"""
#: Delete the lease only if it is still ours.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class Renewal(Enum):
    RENEWED = 1
    TAKEN_BACK = 2
    LOST = 0


def new_token(hostname: str) -> str:
    """A lease token: the worker's name (for logs and operators) and a part no other run shares."""
    return f"{hostname}:{uuid.uuid4().hex[:12]}"


class ExecutionLeases:
    def __init__(self, client: redis.Redis, ttl_s: float) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.ttl_ms = int(ttl_s * 1000)

    def try_acquire(self, job_id: str, token: str) -> bool:
        return bool(self.client.set(keys.lease(job_id), token, nx=True, px=self.ttl_ms))

    def holder(self, job_id: str) -> str | None:
        value = self.client.get(keys.lease(job_id))
        return value.decode() if isinstance(value, bytes) else value

    def remaining_ms(self, job_id: str) -> int:
        """Milliseconds until the lease expires (negative: no lease)."""
        return int(self.client.pttl(keys.lease(job_id)))

    def holds(self, job_id: str, token: str) -> bool:
        """The fence: whether ``token`` still holds the job's lease."""
        return self.holder(job_id) == token

    def renew(self, job_id: str, token: str, client: redis.Redis | None = None) -> Renewal:
        reply = (client or self.client).eval(_RENEW, 1, keys.lease(job_id), token, self.ttl_ms)
        return Renewal(int(reply))

    def release(self, job_id: str, token: str, client: redis.Redis | None = None) -> None:
        """Delete the lease if ``token`` holds it; ``client`` may be a pipeline that sends it with other calls."""
        (client or self.client).eval(_RELEASE, 1, keys.lease(job_id), token)

"""Who may run a job and write its result: the execution lease, taken once per run and checked before writes.

Both job kinds (worker/dance_job.py, worker/workflow_job.py) go through these checks, by way of
worker/job.py: the claim before any work, the cancel checks between stages, and the fence before every
write of the job's result.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from producer import keys
from producer.errors import (
    JOB_ALREADY_ENDED,
    JOB_BUSY_ELSEWHERE,
    JOB_CANCELLED,
    JOB_DUPLICATE_DELIVERY,
    JOB_FENCED,
    DanceError,
    error,
)
from worker.outputs import MANIFEST_NAME
from worker.ownership.cancels import FENCED
from worker.ownership.leases import new_token
from worker.ownership.predecessor import stop_predecessor
from worker.ownership.registry import CLAIMING
from worker.runtime import Runtime

if TYPE_CHECKING:
    from worker.job import JobContext

log = logging.getLogger(__name__)

#: Pause between two looks at a job whose execution lease another run holds, in seconds.
LEASE_POLL_S = 0.5
#: A lease TTL that grew by more than this between two looks was renewed: its holder lives, in ms.
RENEWAL_SEEN_MS = 100
#: Largest manifest read back from storage, in bytes (16 MiB).
MANIFEST_MAX_BYTES = 16 << 20


def claim(runtime: Runtime, ctx: JobContext) -> dict[str, Any] | None:
    """Take the job's execution lease, or return the manifest of a run that already finished it.

    A redelivered copy of a job (a broker reconnect restores a running job's message; a sweep restores
    one whose holder stopped refreshing it) decides quickly, holding a thread but not the GPU:

    * the job already ended (failed or was cancelled for good): the copy is dropped, not run again;
    * another run holds the lease and renews it (it lives: a run of this worker, or a renewal seen within
      one lease TTL): the copy is dropped. Its acknowledgement deletes the ``unacked`` entry it shares with
      the live run (same delivery tag); the live run's heartbeat puts it back (worker/ownership/kombu_compat.py);
    * the lease expires unrenewed (its holder died): the copy takes it over and runs the job.
    """
    decide_by = time.monotonic() + runtime.leases.ttl_s + runtime.settings.heartbeat_interval_s
    seen_ms: int | None = None
    while True:
        finished = existing_manifest(runtime, ctx.job_id)
        if finished is not None:
            return finished
        _raise_if_cancelled_or_ended(runtime, ctx)
        token = new_token(ctx.hostname)
        if runtime.leases.try_acquire(ctx.job_id, token):
            if ctx.run is not None:
                runtime.registry.take_lease(ctx.run, token)
            # The holder may have finished between our look at storage and the acquire.
            finished = existing_manifest(runtime, ctx.job_id)
            if finished is None:
                # A dead run's prompt may still hold a GPU: this run waits until it is stopped (or is itself
                # cancelled or shut down, which the check below turns into its outcome).
                stop_predecessor(runtime.redis, ctx.job_id, token, ctx.cancel.event)
                raise_if_cancelled(runtime, ctx)
            return finished
        holder = runtime.leases.holder(ctx.job_id)
        remaining_ms = runtime.leases.remaining_ms(ctx.job_id)
        alive_here = holder is not None and runtime.registry.holder_alive_here(ctx.job_id, holder)
        if alive_here or (seen_ms is not None and remaining_ms > seen_ms + RENEWAL_SEEN_MS):
            raise error(JOB_DUPLICATE_DELIVERY, "a live run holds this job; this redelivered copy is dropped",
                        job_id=ctx.job_id, holder=holder)
        if time.monotonic() >= decide_by:
            raise error(JOB_BUSY_ELSEWHERE, "another run holds this job's execution lease and neither renews "
                        "nor releases it", job_id=ctx.job_id, holder=holder)
        if seen_ms is None:
            log.warning("job %s is held by %s; checking that it lives", ctx.job_id, holder)
            ctx.phase(CLAIMING)
        seen_ms = remaining_ms if remaining_ms >= 0 else seen_ms
        ctx.cancel.event.wait(LEASE_POLL_S)


def _raise_if_cancelled_or_ended(runtime: Runtime, ctx: JobContext) -> None:
    """The cancel check and the look at the job's end, in one round trip."""
    if ctx.cancel.event.is_set():
        raise _cancelled(ctx)
    pipe = runtime.redis.pipeline(transaction=False)
    pipe.exists(keys.cancelled(ctx.job_id))
    pipe.get(keys.job_ended(ctx.job_id))
    cancelled, ended = pipe.execute()
    if cancelled:
        raise _cancelled(ctx)
    if ended is not None:
        raise error(JOB_ALREADY_ENDED, "the job already ended; this redelivered copy is dropped",
                    job_id=ctx.job_id, ended=json.loads(ended))


def raise_if_fenced(runtime: Runtime, ctx: JobContext) -> None:
    """The fence before every write of the job's result: only the lease's holder writes."""
    token = ctx.run.lease_token if ctx.run is not None else None
    if ctx.cancel.reason == FENCED or token is None or not runtime.leases.holds(ctx.job_id, token):
        if ctx.run is not None:
            runtime.registry.fence(ctx.run)
        raise error(JOB_FENCED, "another run holds this job's execution lease now; this run writes nothing",
                    job_id=ctx.job_id)


def existing_manifest(runtime: Runtime, job_id: str) -> dict[str, Any] | None:
    key = f"{job_id}/{MANIFEST_NAME}"
    if not runtime.storage.exists(key):
        return None
    return read_manifest(runtime, job_id)


def read_manifest(runtime: Runtime, job_id: str) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(
        runtime.storage.read_bytes(f"{job_id}/{MANIFEST_NAME}", max_bytes=MANIFEST_MAX_BYTES))
    return manifest


def raise_if_cancelled(runtime: Runtime, ctx: JobContext) -> None:
    if ctx.cancel.event.is_set() or runtime.redis.exists(keys.cancelled(ctx.job_id)):
        raise _cancelled(ctx)


def _cancelled(ctx: JobContext) -> DanceError:
    return error(JOB_CANCELLED, "the job was cancelled before it ran", job_id=ctx.job_id)

"""The ``dance.generate`` and ``dance.workflow`` tasks: the Celery faces of :func:`worker.job.run_job`.

Both kinds share everything here (the handback to an idle peer, the run in the registry, the outcomes
below); only the kind of job they build from their kwargs differs.

Outcomes, by branch of the error tree:

* success: the result dict (and the manifest in storage);
* a permanent error: the job fails; its result carries ``{code, message, details}``;
* a retryable error of the cluster (ComfyUI died, storage or broker hiccup): the message goes back to
  the queue, at most ``DANCE_MAX_ATTEMPTS`` starts in all, then the job fails with the last code;
* a retryable error of a media host (5xx, timeout): already retried within the download, so the job
  fails with its code;
* a cancel: the job ends REVOKED; a worker shutdown: the job goes back to the queue;
* a run that does not own the job (a redelivered copy while a live run holds it, a copy of a job that
  already ended, a run fenced because another run took its lease): the run ends without touching the
  job's state, which belongs to the owning run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from celery.exceptions import BackendError, Ignore, Reject
from celery.worker import state as worker_state

from producer.celeryconf import TASK_NAME, WORKFLOW_TASK_NAME
from producer.errors import (
    BROKER_UNREACHABLE,
    JOB_ALREADY_ENDED,
    JOB_CANCELLED,
    JOB_DUPLICATE_DELIVERY,
    JOB_FENCED,
    JOB_WORKER_STOPPED,
    ComfyUnavailable,
    DanceError,
    InputUnavailable,
    PermanentError,
    error,
)
from worker.app import app
from worker.dance_job import DanceJob
from worker.job import JobContext, JobKind, run_job
from worker.ownership.cancels import FENCED, REVOKED, SHUTDOWN
from worker.ownership.kombu_compat import HeldMessage, held_message
from worker.ownership.registry import Run
from worker.progress import ProgressReporter
from worker.runtime import Runtime
from worker.startup import FIRST_JOB
from worker.workflow_job import WorkflowJob

log = logging.getLogger(__name__)

#: State of a job handed back to the queue after a transient failure, until a worker starts it again.
REQUEUED_STATE = "REQUEUED"
#: Codes of a run that does not own its job: it ends leaving the job's state alone.
NOT_OURS = frozenset({JOB_DUPLICATE_DELIVERY, JOB_ALREADY_ENDED, JOB_FENCED})
#: Heartbeats for which a dropped copy's worker keeps the live run's entry: the live run's own heartbeat
#: beats at least once in that time.
WARD_BEATS = 3


#: What both tasks pass to Celery: ack after the job ended, requeue a job whose worker was lost.
TASK_OPTIONS: dict[str, Any] = {
    "bind": True, "acks_late": True, "reject_on_worker_lost": True, "throws": (PermanentError,),
    "Request": "worker.task_request:RedactingRequest",
}


@app.task(name=TASK_NAME, **TASK_OPTIONS)
def generate(
    self: Any, request: dict[str, Any], deadline_s: float | None = None, submitted_at: float | None = None
) -> dict[str, Any]:
    return run_task(self, lambda: DanceJob.parse(request), deadline_s, submitted_at)


@app.task(name=WORKFLOW_TASK_NAME, **TASK_OPTIONS)
def run_workflow(
    self: Any, workflow: dict[str, Any], owner: str = "", deadline_s: float | None = None,
    submitted_at: float | None = None,
) -> dict[str, Any]:
    return run_task(self, lambda: WorkflowJob.parse(workflow, owner), deadline_s, submitted_at)


def run_task(
    self: Any, kind_of: Callable[[], JobKind], deadline_s: float | None, submitted_at: float | None
) -> dict[str, Any]:
    """Run one job of the kind ``kind_of`` builds (inside the error handling: a bad request fails the job)."""
    runtime = Runtime.current(self.app)
    job_id: str = self.request.id
    settings = runtime.settings
    runtime.timeline.mark(FIRST_JOB)
    if runtime.pipeline.should_hand_back(job_id):
        # Taken ahead by a busy worker in the instant a peer turned idle: the idle GPU should run it.
        # Not an attempt: nothing ran.
        log.info("job %s: handed back to the queue, a peer is idle while this GPU is busy", job_id)
        raise Reject("handed back to an idle peer", requeue=True)
    revoked = job_id in worker_state.revoked
    with runtime.registry.holding(job_id, _held_message(job_id), revoked=revoked) as run:
        ctx = JobContext(
            job_id=job_id,
            hostname=self.request.hostname or "",
            deadline_s=min(deadline_s or settings.job_deadline_s, settings.max_job_deadline_s),
            submitted_at=submitted_at,
            cancel=run.cancel,
            progress=ProgressReporter(self, job_id, runtime.state_writes),
            phase=lambda phase: setattr(run, "phase", phase),
            run=run,
        )
        try:
            return _run_and_close(runtime, ctx, kind_of)
        except redis.RedisError as exc:
            # The bookkeeping client already retried for DANCE_REDIS_RETRY_S: hand the job back, never fail it.
            broker = error(BROKER_UNREACHABLE, f"the broker did not answer: {type(exc).__name__}", job_id=job_id)
            _settle(self, runtime, run, broker, ctx.attempt)
            raise broker from exc
        except DanceError as exc:
            _settle(self, runtime, run, exc, ctx.attempt)
            raise


def _run_and_close(runtime: Runtime, ctx: JobContext, kind_of: Callable[[], JobKind]) -> dict[str, Any]:
    try:
        return run_job(runtime, ctx, kind_of())
    finally:
        # The run's STARTED and PROGRESS writes go out on their own thread: all of them land before the
        # outcome (Celery's SUCCESS or FAILURE, or _settle's REVOKED or REQUEUED), never after it.
        ctx.progress.close()


def _held_message(job_id: str) -> HeldMessage | None:
    """The message this task runs for, as the heartbeat needs it (copies of one job share it)."""
    for request in list(worker_state.active_requests):
        if request.id == job_id and getattr(request, "message", None) is not None:
            return held_message(request.message)
    return None


def _settle(task: Any, runtime: Runtime, run: Run, exc: DanceError, attempt: int) -> None:
    """Turn a cancel, a shutdown or a retryable error into Celery's terms; return to let ``exc`` fail the job."""
    job_id, flag = task.request.id, run.cancel
    if exc.code in NOT_OURS or (exc.code == JOB_CANCELLED and flag.reason == FENCED):
        log.warning("job %s: %s; this run ends without touching the job's state", job_id, exc)
        if exc.code == JOB_DUPLICATE_DELIVERY:
            # Our ack is about to delete the entry we share with the live run (worker/ownership/registry.py Ward).
            runtime.registry.ward(job_id, run.message, for_s=WARD_BEATS * runtime.settings.heartbeat_interval_s)
        raise Ignore() from exc
    if exc.code == JOB_CANCELLED:
        if flag.reason == SHUTDOWN:
            log.warning("job %s: worker shutting down; handing the job back to the queue", job_id)
            stopped = error(JOB_WORKER_STOPPED, "the worker was stopped mid-job; the job went back to the queue")
            _mark_requeued(task, job_id, attempt, stopped)
            raise Reject(str(stopped), requeue=True) from exc
        if flag.reason != REVOKED:
            # Cancelled through the Redis marker: no revoke reached this worker, so the state is ours to set.
            task.backend.mark_as_revoked(job_id, "cancelled", request=task.request)
        raise Ignore() from exc  # the state stays REVOKED; a FAILURE must not overwrite it
    if not exc.retryable or isinstance(exc, InputUnavailable):
        # A media host that still fails after the download's own retries (DANCE_DOWNLOAD_ATTEMPTS)
        # fails the job with its code; requeueing would only repeat those retries elsewhere.
        return
    if attempt >= runtime.settings.max_attempts:
        log.error("job %s: %s after %d attempts; failing it", job_id, exc.code, attempt)
        return
    if isinstance(exc, ComfyUnavailable) and runtime.gate is not None:
        runtime.gate.mark_down()  # detach before requeueing, or this worker takes the job right back
    log.warning("job %s: %s; handing the job back to the queue (attempt %d of %d)",
                job_id, exc, attempt, runtime.settings.max_attempts)
    _mark_requeued(task, job_id, attempt, exc)
    raise Reject(str(exc), requeue=True) from exc


def _mark_requeued(task: Any, job_id: str, attempt: int, exc: DanceError) -> None:
    try:
        task.update_state(state=REQUEUED_STATE, meta={"job_id": job_id, "attempt": attempt, **exc.as_dict()})
    except (redis.RedisError, BackendError) as state_exc:
        # Deliberate: the handback matters more than the state shown meanwhile. The result backend retries
        # on its own and then raises BackendStoreError, not a redis error: that too must not turn the
        # handback into a failure without a code.
        log.warning("job %s: REQUEUED state not recorded (%s)", job_id, state_exc)

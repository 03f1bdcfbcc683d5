"""Where a GPU worker sees its jobs end: Celery's task signals, turned into ledger entries and metrics.

* ``task_success`` / ``task_failure``: the job ended with its result or its error's code;
* ``task_revoked``: a revoke met the job, queued or running (fired on the event loop's thread);
* ``task_postrun`` in state IGNORED: the job dropped itself because its Redis cancel marker was set
  although no revoke reached this worker (a worker started after the cancel);
* ``task_prerun`` / ``task_postrun``: the span of GPU time, for the busy fraction.

A job handed back to the queue (Reject) fires none of the ending signals: it has not ended. Each handler
does one Lua call (:func:`producer.ledger.settle`, which also writes the end's webhook and batch completion
to the outbox) and at most two small publishes; the webhooks themselves go out from the hooks worker, so a
slow endpoint can never hold a GPU worker. While the broker is away the settle is retried with the shared
backoff for up to :data:`SETTLE_RETRY_S` (as long as result writes are retried), so a Redis restart does
not leave a batch's pending counter above 0; the settle is idempotent, so a retry after a lost reply is safe.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import states
from celery.signals import task_failure, task_postrun, task_prerun, task_revoked, task_success

from producer import keys, ledger
from producer.celeryconf import JOB_TASK_NAMES
from producer.errors import JOB_CANCELLED
from worker.backoff import Backoff
from worker.runtime import Runtime
from worker.telemetry.metrics import WorkerMetrics

log = logging.getLogger(__name__)

#: How long a job's end is retried while the broker cannot be reached, in seconds (as result writes are:
#: worker/app.py BACKEND_RETRY_TIMEOUT_S).
SETTLE_RETRY_S = 30.0
#: Pauses between those retries, in seconds.
SETTLE_BACKOFF = Backoff(base_s=0.1, cap_s=4.0)


def _ours(task: Any) -> bool:
    return getattr(task, "name", None) in JOB_TASK_NAMES and getattr(task.app, "dance_runtime", None) is not None


def _metrics(task: Any) -> WorkerMetrics | None:
    return getattr(task.app, "dance_metrics", None)


def job_ended(task: Any, job_id: str, outcome: ledger.Outcome, timings: dict[str, Any] | None = None) -> None:
    """Settle the job in the ledger and, if this was the first word of its end, count it."""
    runtime = Runtime.current(task.app)
    settled = settle_retrying(runtime.redis, job_id, outcome)
    if settled is not None:
        ledger.publish(task.app, settled.followups)
    metrics = _metrics(task)
    if metrics is not None and (settled is None or settled.first):
        metrics.job_ended(outcome.status, outcome.code, timings)


def settle_retrying(client: redis.Redis, job_id: str, outcome: ledger.Outcome,
                    retry_for_s: float = SETTLE_RETRY_S) -> ledger.Settled | None:
    """:func:`producer.ledger.settle`, retried while Redis is away; None (logged) if it never answered.

    No new try starts after ``retry_for_s``; a client with retries of its own (the runtime's) may take
    longer inside one try. Never raises: a job's end must not turn into a crash of the signal handler that saw it.
    """
    deadline = time.monotonic() + retry_for_s
    failures = 0
    while True:
        try:
            return ledger.settle(client, job_id, outcome)
        except redis.RedisError as exc:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                log.error("job %s ended %s but its end could not be recorded for %.0fs: %s",
                          job_id, outcome.status, retry_for_s, exc)
                return None
            log.warning("job %s ended %s; recording its end failed (%s), retrying", job_id, outcome.status, exc)
            time.sleep(min(left_s, SETTLE_BACKOFF.delay_s(failures)))
            failures += 1


def on_prerun(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    metrics = _metrics(sender) if _ours(sender) else None
    if metrics is not None and task_id:
        metrics.job_started(task_id)


def on_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    if not _ours(sender):
        return
    timings = result.get("timings") if isinstance(result, dict) else None
    job_ended(sender, sender.request.id, ledger.Outcome(ledger.SUCCEEDED), timings)


def on_failure(sender: Any = None, task_id: str | None = None, exception: BaseException | None = None,
               **_: Any) -> None:
    if not _ours(sender) or not task_id:
        return
    code = getattr(exception, "code", None) or type(exception).__name__
    job_ended(sender, task_id, ledger.Outcome(ledger.FAILED, str(code)))


def on_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    job_id = getattr(request, "id", None)
    if _ours(sender) and job_id:
        job_ended(sender, job_id, ledger.Outcome(ledger.CANCELLED, JOB_CANCELLED))


def on_postrun(sender: Any = None, task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    if not _ours(sender) or not task_id:
        return
    metrics = _metrics(sender)
    if metrics is not None:
        metrics.job_finished(task_id)
    if state != states.IGNORED:
        return
    try:
        cancelled = Runtime.current(sender.app).redis.exists(keys.cancelled(task_id))
    except redis.RedisError as exc:
        log.error("job %s was dropped but its cancel marker could not be read: %s", task_id, exc)
        return
    if cancelled:
        job_ended(sender, task_id, ledger.Outcome(ledger.CANCELLED, JOB_CANCELLED))


def connect() -> None:
    """Connect the handlers (weakly held by Celery, so they stay module functions)."""
    task_prerun.connect(on_prerun)
    task_success.connect(on_success)
    task_failure.connect(on_failure)
    task_revoked.connect(on_revoked)
    task_postrun.connect(on_postrun)

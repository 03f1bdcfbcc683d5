"""The hooks worker's tasks: ``dance.webhook`` (one signed delivery) and ``dance.batch_completed``.

``dance.batch_completed`` is enqueued exactly once per batch, by whoever settled its last job (see
:mod:`producer.ledger`). It records the completion time and summary on the batch, counts its own runs in
the batch record (``completions``: 1 unless the broker redelivered it), then enqueues the batch's webhook.

``dance.webhook`` builds the body from what is stored (the job's result-backend record, or the batch's
summary), signs each attempt afresh, and retries retryable failures with the shared backoff, up to
``DANCE_WEBHOOK_ATTEMPTS``. Every attempt of one delivery carries the same ``webhook-id``. Both tasks
retry a broker hiccup the same way, so neither a webhook nor a completion is lost to one.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import redis

from producer import keys, ledger
from producer.batch import job_view
from producer.errors import CONFIG_INVALID, RetryableError, error
from producer.redact import redact_url
from producer.webhooks import signed_headers
from worker.hooks.app import HooksRuntime, app
from worker.hooks.delivery import post

log = logging.getLogger(__name__)


@app.task(bind=True, name=ledger.BATCH_COMPLETED_TASK, acks_late=True, max_retries=None)
def batch_completed(self: Any, batch_id: str) -> dict[str, Any]:
    runtime = HooksRuntime.current(self.app)
    try:
        summary = runtime.client.batch(batch_id).summary()
        summary.completed_at = summary.completed_at or datetime.now(UTC).timestamp()
        meta = keys.batch_meta(batch_id)
        pipe = runtime.redis.pipeline()
        pipe.hsetnx(meta, "completed_at", summary.completed_at)
        pipe.hset(meta, "summary", json.dumps(summary.as_dict()))
        pipe.hincrby(meta, "completions", 1)
        pipe.expire(meta, keys.JOB_KEY_TTL_S)
        pipe.hget(meta, "callback_url")
        callback = pipe.execute()[-1]
    except (RetryableError, redis.RedisError) as exc:
        raise _retry(self, runtime, exc, f"completion of batch {batch_id}") from exc
    log.info("batch %s completed: %s", batch_id, summary.as_dict())
    if callback:
        ledger.send_hook(self.app, ledger.WEBHOOK_TASK, f"webhook-batch-{batch_id}",
                         {"kind": "batch", "subject": batch_id})
    return summary.as_dict()


@app.task(bind=True, name=ledger.WEBHOOK_TASK, acks_late=True, max_retries=None)
def webhook(self: Any, kind: str, subject: str) -> dict[str, Any]:
    runtime = HooksRuntime.current(self.app)
    secret = runtime.settings.secret
    try:
        url, msg_id, payload = delivery_for(runtime, kind, subject)
        if url is None:
            return {"sent": False, "reason": "no callback URL"}
        if secret is None:
            raise error(CONFIG_INVALID, "DANCE_WEBHOOK_SECRET is not set; webhooks are not sent unsigned",
                        variable="DANCE_WEBHOOK_SECRET")
        body = json.dumps(payload, ensure_ascii=False).encode()
        status = post(url, body, signed_headers(secret, msg_id, body), runtime.allow, runtime.settings.timeout_s)
    except (RetryableError, redis.RedisError) as exc:
        raise _retry(self, runtime, exc, f"webhook of {kind} {subject}") from exc
    attempts = self.request.retries + 1
    return {"sent": True, "webhook_id": msg_id, "url": redact_url(url), "status": status, "attempts": attempts}


def _retry(task: Any, runtime: HooksRuntime, exc: Exception, what: str) -> Exception:
    """The exception to raise: Celery's Retry after a backoff, or ``exc`` itself after the last attempt."""
    attempt = task.request.retries + 1
    if attempt >= runtime.settings.attempts:
        log.error("%s failed after %d attempts: %s", what, attempt, exc)
        return exc
    delay_s = runtime.backoff.delay_s(task.request.retries)
    log.warning("%s: attempt %d failed (%s); retrying in %.1fs", what, attempt, exc, delay_s)
    retry: Exception = task.retry(exc=exc, countdown=delay_s, throw=False)
    return retry


def delivery_for(runtime: HooksRuntime, kind: str, subject: str) -> tuple[str | None, str, dict[str, Any]]:
    """(callback URL, webhook id, body) of a job's or a batch's webhook."""
    now = datetime.now(UTC).isoformat()
    if kind == "batch":
        meta = runtime.redis.hgetall(keys.batch_meta(subject))
        summary = json.loads(meta.get(b"summary") or b"{}")
        url = _text(meta.get(b"callback_url")) or None
        return url, f"msg_batch_{subject}", {"type": "batch.completed", "timestamp": now, "data": summary}
    raw_url = runtime.redis.get(keys.job_callback(subject))
    backend = runtime.client.app.backend
    raw_meta = backend.client.get(backend.get_key_for_task(subject))  # results may live apart from the broker
    submitted = bool(runtime.redis.exists(keys.submitted(subject)))
    view = job_view(subject, json.loads(raw_meta) if raw_meta else None, submitted)
    body = {"type": f"job.{view['status']}", "timestamp": now, "data": view}
    return _text(raw_url) or None, f"msg_job_{subject}", body


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")

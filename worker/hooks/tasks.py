"""The hooks worker's tasks: ``dance.webhook`` (one signed delivery attempt) and ``dance.batch_completed``.

Every message names an outbox entry (:mod:`producer.outbox`) and is only a request to try it now. A task
first claims the entry, which counts the attempt and holds the entry for ``DANCE_WEBHOOK_TIMEOUT_S`` plus a
margin, so the reconciler does not republish it meanwhile; a message for an entry already delivered,
given up or claimed by another delivery (a republish, a visibility-timeout restore) is dropped without an
attempt. Every message is acknowledged within one attempt: a failed attempt is retried by moving the
entry's due time by the shared backoff (the reconciler publishes it then), never by Celery's
``retry(countdown=...)``, whose ETA message would wait unacked and be restored by every GPU worker's short
visibility-timeout sweep (celery#5935), each copy firing and retrying on its own.

``dance.batch_completed`` records the completion time and summary on the batch, counts itself in the batch
record (``completions``) and writes the batch's webhook to the outbox, all in one script that also marks
its entry done (:func:`producer.ledger.record_completion`): it happens once however often it is delivered.

``dance.webhook`` builds the body from what is stored (the job's result-backend record, or the batch's
summary), signs each attempt afresh, and retries retryable failures up to ``DANCE_WEBHOOK_ATTEMPTS``.
Every attempt of one delivery carries the same ``webhook-id``, its entry's id. Both tasks retry a broker
hiccup the same way; an entry given up on is listed in ``dance:outbox:given_up`` with its code. Between
attempts the task's result is ``RETRY``; the last attempt leaves ``SUCCESS`` or ``FAILURE``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import redis
from celery.exceptions import Ignore

from producer import keys, ledger, outbox
from producer.batch import job_view
from producer.errors import BROKER_UNREACHABLE, CONFIG_INVALID, DanceError, RetryableError, error
from producer.redact import redact_url
from producer.webhooks import signed_headers
from worker.hooks.app import HooksRuntime, app
from worker.hooks.delivery import post

log = logging.getLogger(__name__)


@app.task(bind=True, name=ledger.BATCH_COMPLETED_TASK, acks_late=True)
def batch_completed(self: Any, batch_id: str) -> dict[str, Any]:
    runtime = HooksRuntime.current(self.app)
    held = _claim(runtime, outbox.COMPLETION_PREFIX + batch_id)
    try:
        summary = runtime.client.batch(batch_id).summary()
        summary.completed_at = summary.completed_at or datetime.now(UTC).timestamp()
        recorded, hook = ledger.record_completion(runtime.redis, held, batch_id, summary.as_dict(),
                                                  summary.completed_at)
    except (DanceError, redis.RedisError) as exc:
        raise _failed(self, runtime, held, exc, f"completion of batch {batch_id}") from exc
    if not recorded:
        log.warning("batch %s: its completion was recorded by another delivery (this claim had expired)", batch_id)
        raise Ignore()
    log.info("batch %s completed: %s", batch_id, summary.as_dict())
    if hook is not None:
        ledger.publish(self.app, [hook])
    return summary.as_dict()


@app.task(bind=True, name=ledger.WEBHOOK_TASK, acks_late=True)
def webhook(self: Any, kind: str, subject: str) -> dict[str, Any]:
    runtime = HooksRuntime.current(self.app)
    held = _claim(runtime, outbox.webhook_id(kind, subject))
    secret = runtime.settings.secret
    try:
        url, msg_id, payload = delivery_for(runtime, kind, subject)
        if url is not None:
            if secret is None:
                raise error(CONFIG_INVALID, "DANCE_WEBHOOK_SECRET is not set; webhooks are not sent unsigned",
                            variable="DANCE_WEBHOOK_SECRET")
            body = json.dumps(payload, ensure_ascii=False).encode()
            status = post(url, body, signed_headers(secret, msg_id, body), runtime.allow, runtime.settings.timeout_s)
    except (DanceError, redis.RedisError) as exc:
        raise _failed(self, runtime, held, exc, f"webhook of {kind} {subject}") from exc
    _done(runtime, held)
    if url is None:
        return {"sent": False, "reason": "no callback URL"}
    return {"sent": True, "webhook_id": msg_id, "url": redact_url(url), "status": status, "attempts": held.attempt}


def _claim(runtime: HooksRuntime, entry_id: str) -> outbox.Claim:
    """The claim on the entry for this attempt; raises Ignore (the message is acked, its result untouched)
    when there is nothing to do now or Redis cannot say (the entry stays in the outbox either way)."""
    settings = runtime.settings
    try:
        held = outbox.claim(runtime.redis, entry_id, settings.claim_s, settings.attempts)
    except redis.RedisError as exc:
        log.warning("%s: cannot claim it (%s); the reconciler publishes it again later", entry_id, exc)
        raise Ignore() from exc
    if held.status == outbox.GIVEN_UP:
        log.error("%s given up after %d attempts [%s] (the last one's worker died)", entry_id, held.attempt,
                  held.last_code or "unknown")
    elif not held.claimed:
        log.info("%s: duplicate message dropped (the entry is %s)", entry_id,
                 "being delivered or waiting" if held.status == "busy" else "done")
    if not held.claimed:
        raise Ignore()
    return held


def _done(runtime: HooksRuntime, held: outbox.Claim) -> None:
    try:
        recorded = outbox.delivered(runtime.redis, held)
    except redis.RedisError as exc:
        # Sent but not recorded: the claim expires and the entry is sent once more (at least once).
        log.warning("%s: delivered, but Redis could not record it (%s); it will be sent again", held.entry_id, exc)
        return
    if not recorded:
        log.warning("%s: delivered, but its claim had expired meanwhile (another attempt may follow)", held.entry_id)


def _failed(task: Any, runtime: HooksRuntime, held: outbox.Claim, exc: Exception, what: str) -> Exception:
    """What to raise after a failed attempt: Ignore once a retry is scheduled in the outbox, else ``exc``."""
    code = exc.code if isinstance(exc, DanceError) else BROKER_UNREACHABLE
    retryable = isinstance(exc, RetryableError | redis.RedisError)
    try:
        if retryable and held.attempt < runtime.settings.attempts:
            delay_s = runtime.backoff.delay_s(held.attempt - 1)
            outbox.retry_later(runtime.redis, held, delay_s, code, str(exc))
            log.warning("%s: attempt %d failed (%s); due again in %.1fs", what, held.attempt, exc, delay_s)
            task.backend.mark_as_retry(task.request.id, exc, request=task.request)
            return _ignore()
        outbox.give_up(runtime.redis, held, code, str(exc))
    except redis.RedisError as lost:
        # The claim expires and the reconciler publishes the entry again: one more attempt, nothing lost.
        log.warning("%s: attempt %d failed (%s) and the outbox could not be updated (%s)", what, held.attempt,
                    exc, lost)
        return _ignore()
    log.error("%s given up after %d attempts [%s]: %s", what, held.attempt, code, exc)
    return exc


def _ignore() -> Exception:
    """Celery's Ignore: the message is acked and the task's result is left as it is."""
    ignored: Exception = Ignore()
    return ignored


def delivery_for(runtime: HooksRuntime, kind: str, subject: str) -> tuple[str | None, str, dict[str, Any]]:
    """(callback URL, webhook id, body) of a job's or a batch's webhook."""
    now = datetime.now(UTC).isoformat()
    if kind == "batch":
        meta = runtime.redis.hgetall(keys.batch_meta(subject))
        summary = json.loads(meta.get(b"summary") or b"{}")
        url = _text(meta.get(b"callback_url")) or None
        return url, outbox.webhook_id(kind, subject), {"type": "batch.completed", "timestamp": now, "data": summary}
    raw_url = runtime.redis.get(keys.job_callback(subject))
    backend = runtime.client.app.backend
    raw_meta = backend.client.get(backend.get_key_for_task(subject))  # results may live apart from the broker
    submitted = bool(runtime.redis.exists(keys.submitted(subject)))
    view = job_view(subject, json.loads(raw_meta) if raw_meta else None, submitted)
    body = {"type": f"job.{view['status']}", "timestamp": now, "data": view}
    return _text(raw_url) or None, outbox.webhook_id(kind, subject), body


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")

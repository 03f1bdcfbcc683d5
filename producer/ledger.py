"""The job ledger: which jobs have ended, the batch each belongs to, and whom to tell when they end.

A job can be seen to end in several places: a worker's ``task_success``, ``task_failure`` and
``task_revoked`` signals, a worker that drops a job it finds cancelled, and a producer that cancels a job
still in the queue. Every one of them calls :func:`settle`, one Lua script that does, atomically:

* ``SET NX`` the job's ``ended`` marker: only the first caller goes on, so each job counts once however
  many of those places see its end (a revoke seen by both the producer and the worker, a redelivery);
* ``DECR`` its batch's ``pending`` counter, if it belongs to a batch, and report when it reached 0;
* count the end for the cluster's job rate, and hand back the job's callback URL.

The first caller then :func:`dispatch` es the follow-ups as lightweight tasks on :data:`HOOKS_QUEUE`, which
GPU workers never consume: a webhook for the job, and the batch's completion when it was the last job.
Because the counter lives in Redis and is decremented where jobs end, a batch completes exactly once
whether or not its producer is still running, and a worker that dies mid-job leaves the counter alone
(the job is redelivered and ends later).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from producer import keys

log = logging.getLogger(__name__)

#: The queue of webhook deliveries and batch completions, consumed by ``dance hooks-worker``.
HOOKS_QUEUE = "dance.webhooks"
#: Delivers one signed webhook (job or batch); the hooks worker registers it.
WEBHOOK_TASK = "dance.webhook"
#: Records a batch's completion and sends its webhook; enqueued exactly once per batch.
BATCH_COMPLETED_TASK = "dance.batch_completed"
#: How long a per-minute job counter is kept, in seconds.
RATE_WINDOW_TTL_S = 3600
#: Jobs linked to a batch per Lua call, so one call never blocks Redis for long.
LINK_CHUNK = 500
#: Outcomes of an ended job.
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"

_SETTLE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return {0, '', -1, ''} end
redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], ARGV[3])
local batch = redis.call('GET', KEYS[2]) or ''
local remaining = -1
if batch ~= '' then remaining = redis.call('DECR', ARGV[4] .. batch .. ARGV[5]) end
return {1, batch, remaining, redis.call('GET', KEYS[3]) or ''}
"""

_CREATE_BATCH = """
local existing = redis.call('HGET', KEYS[1], 'fingerprint')
if existing then
  if existing ~= ARGV[1] then return 'mismatch' end
  return 'exists'
end
redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'total', ARGV[2], 'created_at', ARGV[4], 'callback_url', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 'created'
"""

# ARGV: batch id, ttl, job key prefix, link suffix, ended suffix, then (job id, line) pairs.
_LINK_JOBS = """
local prefix, link, ended = ARGV[3], ARGV[4], ARGV[5]
for i = 6, #ARGV, 2 do
  local owner = redis.call('GET', prefix .. ARGV[i] .. link)
  if owner and owner ~= ARGV[1] then return {'taken', ARGV[i], owner} end
end
local completed = 0
for i = 6, #ARGV, 2 do
  if redis.call('SET', prefix .. ARGV[i] .. link, ARGV[1], 'NX', 'EX', ARGV[2]) then
    redis.call('ZADD', KEYS[2], ARGV[i + 1], ARGV[i])
    if redis.call('EXISTS', prefix .. ARGV[i] .. ended) == 1 and redis.call('DECR', KEYS[1]) == 0 then
      completed = 1
    end
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {'ok', tostring(completed), ''}
"""


@dataclass(frozen=True)
class Outcome:
    """How a job ended: ``succeeded``, ``failed`` (with the error's code) or ``cancelled``."""

    status: str
    code: str | None = None

    def to_json(self) -> str:
        return json.dumps({"status": self.status, "code": self.code, "at": time.time()})


@dataclass(frozen=True)
class Settled:
    """What :func:`settle` found."""

    #: True for the one caller that recorded the end; every later caller gets False and does nothing.
    first: bool
    batch_id: str | None = None
    #: Jobs of the batch still pending after this one (None outside a batch).
    batch_remaining: int | None = None
    callback_url: str | None = None

    @property
    def batch_completed(self) -> bool:
        return self.first and self.batch_id is not None and self.batch_remaining == 0


def _split(template: str) -> tuple[str, str]:
    prefix, _, suffix = template.partition("\0")
    return prefix, suffix


def settle(client: redis.Redis, job_id: str, outcome: Outcome) -> Settled:
    """Record that ``job_id`` ended; see the module docstring. Raises ``redis.RedisError``."""
    prefix, suffix = _split(keys.batch_pending("\0"))
    minute = int(time.time() // 60)
    reply = client.eval(
        _SETTLE, 4, keys.job_ended(job_id), keys.job_batch(job_id), keys.job_callback(job_id),
        keys.ended_per_minute(minute), outcome.to_json(), keys.JOB_KEY_TTL_S, RATE_WINDOW_TTL_S, prefix, suffix,
    )
    first, batch, remaining, callback = reply
    if not int(first):
        return Settled(first=False)
    batch_id = _text(batch) or None
    return Settled(
        first=True, batch_id=batch_id, batch_remaining=int(remaining) if batch_id else None,
        callback_url=_text(callback) or None,
    )


def dispatch(app: Celery, job_id: str, settled: Settled) -> None:
    """Enqueue the follow-ups of a job's end on :data:`HOOKS_QUEUE` (only the first settler does)."""
    if not settled.first:
        return
    if settled.callback_url:
        send_hook(app, WEBHOOK_TASK, f"webhook-job-{job_id}", {"kind": "job", "subject": job_id})
    if settled.batch_completed and settled.batch_id:
        complete_batch(app, settled.batch_id)


def complete_batch(app: Celery, batch_id: str) -> None:
    send_hook(app, BATCH_COMPLETED_TASK, f"batch-completed-{batch_id}", {"batch_id": batch_id})


def send_hook(app: Celery, task: str, task_id: str, kwargs: dict[str, Any]) -> None:
    app.send_task(task, kwargs=kwargs, task_id=task_id, queue=HOOKS_QUEUE, routing_key=HOOKS_QUEUE,
                  retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5})


def settle_and_dispatch(client: redis.Redis, app: Celery, job_id: str, outcome: Outcome) -> Settled | None:
    """:func:`settle` then :func:`dispatch`, logging instead of raising when the broker is down.

    Used where a job's end must never turn into a crash (a worker's signal handlers): the job itself
    has ended either way, and the broker being down is reported by every other part of the system.
    """
    try:
        settled = settle(client, job_id, outcome)
        dispatch(app, job_id, settled)
    except (redis.RedisError, OperationalError) as exc:
        log.error("job %s ended %s but its end could not be recorded: %s", job_id, outcome.status, exc)
        return None
    return settled


def create_batch(
    client: redis.Redis, batch_id: str, fingerprint: str, total: int, callback_url: str | None
) -> str:
    """Create the batch's record and counter; ``created``, ``exists`` (same jobs) or ``mismatch``."""
    reply = client.eval(
        _CREATE_BATCH, 2, keys.batch_meta(batch_id), keys.batch_pending(batch_id),
        fingerprint, total, keys.JOB_KEY_TTL_S, time.time(), callback_url or "",
    )
    return _text(reply)


def link_jobs(client: redis.Redis, batch_id: str, jobs: Sequence[tuple[str, int]]) -> tuple[bool, str | None]:
    """Tie jobs to the batch; returns (whether the batch completed here, a job owned by another batch)."""
    prefix, link = _split(keys.job_batch("\0"))
    ended = _split(keys.job_ended("\0"))[1]
    completed = False
    for start in range(0, len(jobs), LINK_CHUNK):
        pairs = [item for job_id, line in jobs[start:start + LINK_CHUNK] for item in (job_id, line)]
        status, value, _ = client.eval(
            _LINK_JOBS, 2, keys.batch_pending(batch_id), keys.batch_jobs(batch_id),
            batch_id, keys.JOB_KEY_TTL_S, prefix, link, ended, *pairs,
        )
        if _text(status) == "taken":
            return completed, _text(value)
        completed = completed or _text(value) == "1"
    return completed, None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")

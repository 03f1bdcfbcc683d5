"""The job ledger: which jobs have ended, the batch each belongs to, and whom to tell when they end.

A job can be seen to end in several places: a worker's ``task_success``, ``task_failure`` and
``task_revoked`` signals, a worker that drops a job it finds cancelled, and a producer that cancels a job
still in the queue. Every one of them calls :func:`settle`, one Lua script that does, atomically:

* ``SET NX`` the job's ``ended`` marker: only the first caller goes on, so each job counts once however
  many of those places see its end (a revoke seen by both the producer and the worker, a redelivery);
* ``DECR`` its batch's ``pending`` counter, if it belongs to a batch, and see whether it reached 0;
* write the end's follow-ups to the outbox (:mod:`producer.outbox`): the job's webhook if it has a
  callback URL, the batch's completion if this was its last job;
* count the end for the cluster's job rate.

The first caller then :func:`publish` es those entries as lightweight tasks on :data:`HOOKS_QUEUE`, which
GPU workers never consume. That publish is only the fast path: the entries are in Redis already, and the
hooks worker's reconciler publishes any that nobody claimed, so a publish lost to a broker hiccup delays a
webhook or a completion but never loses it. Because the counter lives in Redis and is decremented where
jobs end, a batch completes exactly once whether or not its producer is still running, and a worker that
dies mid-job leaves the counter alone (the job is redelivered and ends later).
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

from producer import keys, outbox
from producer.outbox import Entry

log = logging.getLogger(__name__)

#: Where the hooks worker's tasks are, named here too for the modules that know the ledger only.
HOOKS_QUEUE = outbox.HOOKS_QUEUE
WEBHOOK_TASK = outbox.WEBHOOK_TASK
BATCH_COMPLETED_TASK = outbox.BATCH_COMPLETED_TASK
#: How long a per-minute job counter is kept, in seconds.
RATE_WINDOW_TTL_S = 3600
#: Jobs linked to a batch per Lua call, so one call never blocks Redis for long.
LINK_CHUNK = 500
#: Outcomes of an ended job.
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"

# KEYS: ended, job's batch, job's callback, minute counter, outbox due set.
# ARGV: outcome, key ttl, rate ttl, pending prefix, pending suffix, entry prefix, grace_s,
#       then the job webhook's id, task, task id, kwargs, then the completion's id prefix and task.
_SETTLE = outbox.LUA_LIB + """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return {0, '', -1, '', 0, 0} end
redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], ARGV[3])
local batch = redis.call('GET', KEYS[2]) or ''
local callback = redis.call('GET', KEYS[3]) or ''
local remaining, hooked, completing = -1, 0, 0
if callback ~= '' then
  hooked = outbox_put(ARGV[6] .. ARGV[8], KEYS[5], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[7], ARGV[2])
end
if batch ~= '' then
  remaining = redis.call('DECR', ARGV[4] .. batch .. ARGV[5])
  if remaining == 0 then
    local id = ARGV[12] .. batch
    completing = outbox_put(ARGV[6] .. id, KEYS[5], id, ARGV[13], id, cjson.encode({batch_id = batch}),
                            ARGV[7], ARGV[2])
  end
end
return {1, batch, remaining, callback, hooked, completing}
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

# KEYS: pending, jobs, the completion's entry, outbox due set.
# ARGV: batch id, ttl, job key prefix, link suffix, ended suffix, completion id, task, kwargs, grace_s,
#       then (job id, line) pairs.
_LINK_JOBS = outbox.LUA_LIB + """
local prefix, link, ended = ARGV[3], ARGV[4], ARGV[5]
for i = 10, #ARGV, 2 do
  local owner = redis.call('GET', prefix .. ARGV[i] .. link)
  if owner and owner ~= ARGV[1] then return {'taken', ARGV[i], owner} end
end
local completed = 0
for i = 10, #ARGV, 2 do
  if redis.call('SET', prefix .. ARGV[i] .. link, ARGV[1], 'NX', 'EX', ARGV[2]) then
    redis.call('ZADD', KEYS[2], ARGV[i + 1], ARGV[i])
    if redis.call('EXISTS', prefix .. ARGV[i] .. ended) == 1 and redis.call('DECR', KEYS[1]) == 0 then
      completed = 1
      outbox_put(KEYS[3], KEYS[4], ARGV[6], ARGV[7], ARGV[6], ARGV[8], ARGV[9], ARGV[2])
    end
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {'ok', tostring(completed), ''}
"""

# KEYS: the completion's entry, outbox due set, batch meta, the batch webhook's entry.
# ARGV: completion id, claim token, done ttl, completed_at, summary, key ttl, then the webhook's id, task,
#       task id, kwargs and grace_s.
_RECORD_COMPLETION = outbox.LUA_LIB + """
if outbox_done(KEYS[1], KEYS[2], ARGV[1], ARGV[2], 'delivered', ARGV[3]) == 0 then return {0, 0} end
redis.call('HSETNX', KEYS[3], 'completed_at', ARGV[4])
redis.call('HSET', KEYS[3], 'summary', ARGV[5])
redis.call('HINCRBY', KEYS[3], 'completions', 1)
redis.call('EXPIRE', KEYS[3], ARGV[6])
local callback = redis.call('HGET', KEYS[3], 'callback_url')
local hooked = 0
if callback and callback ~= '' then
  hooked = outbox_put(KEYS[4], KEYS[2], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[6])
end
return {1, hooked}
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
    #: The outbox entries this end wrote (the job's webhook, the batch's completion), for :func:`publish`.
    followups: tuple[Entry, ...] = ()

    @property
    def batch_completed(self) -> bool:
        return self.first and self.batch_id is not None and self.batch_remaining == 0


def _split(template: str) -> tuple[str, str]:
    prefix, _, suffix = template.partition("\0")
    return prefix, suffix


def settle(client: redis.Redis, job_id: str, outcome: Outcome) -> Settled:
    """Record that ``job_id`` ended with its follow-ups; see the module docstring. Raises ``redis.RedisError``.

    Idempotent: a call repeated after a lost reply finds the ``ended`` marker and changes nothing.
    """
    prefix, suffix = _split(keys.batch_pending("\0"))
    minute = int(time.time() // 60)
    hook = outbox.job_webhook(job_id)
    reply = client.eval(
        _SETTLE, 5, keys.job_ended(job_id), keys.job_batch(job_id), keys.job_callback(job_id),
        keys.ended_per_minute(minute), keys.OUTBOX_DUE, outcome.to_json(), keys.JOB_KEY_TTL_S, RATE_WINDOW_TTL_S,
        prefix, suffix, outbox.entry_prefix(), outbox.FIRST_PUBLISH_GRACE_S,
        hook.id, hook.task, hook.task_id, hook.kwargs_json(), outbox.COMPLETION_PREFIX, outbox.BATCH_COMPLETED_TASK,
    )
    first, batch, remaining, callback, hooked, completing = reply
    if not int(first):
        return Settled(first=False)
    batch_id = _text(batch) or None
    followups = ([hook] if int(hooked) else []) + ([outbox.batch_completion(batch_id)]
                                                    if batch_id and int(completing) else [])
    return Settled(
        first=True, batch_id=batch_id, batch_remaining=int(remaining) if batch_id else None,
        callback_url=_text(callback) or None, followups=tuple(followups),
    )


def publish(app: Celery, entries: Sequence[Entry]) -> None:
    """Publish the entries' messages now, the fast path; a failed publish is logged and left to the reconciler.

    Never raises for the broker: every entry is in the outbox already, and the hooks worker's reconciler
    publishes it once it is due (:data:`producer.outbox.FIRST_PUBLISH_GRACE_S`), so nothing is lost.
    """
    for entry in entries:
        try:
            outbox.publish(app, entry)
        except OperationalError as exc:
            log.warning("%s is in the outbox but could not be published now (%s); the hooks worker's "
                        "reconciler will publish it", entry.id, exc)


def record_completion(
    client: redis.Redis, held: outbox.Claim, batch_id: str, summary: dict[str, Any], completed_at: float
) -> tuple[bool, Entry | None]:
    """Record the batch's completion and mark its outbox entry done, in one script, for the claim's holder only.

    Returns (whether it was recorded: False when the claim was lost to another delivery, which records it
    instead; the batch's webhook entry, written in the same script, when the batch has a callback URL). So the
    ``completions`` counter and the batch webhook happen once however often the completion is delivered.
    """
    hook = outbox.batch_webhook(batch_id)
    recorded, hooked = client.eval(
        _RECORD_COMPLETION, 4, keys.outbox_entry(held.entry_id), keys.OUTBOX_DUE, keys.batch_meta(batch_id),
        keys.outbox_entry(hook.id), held.entry_id, held.token, outbox.DONE_TTL_S, completed_at,
        json.dumps(summary), keys.JOB_KEY_TTL_S, hook.id, hook.task, hook.task_id, hook.kwargs_json(),
        outbox.FIRST_PUBLISH_GRACE_S,
    )
    return bool(int(recorded)), hook if int(hooked) else None


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
    """Tie jobs to the batch; returns (whether the batch completed here, a job owned by another batch).

    A batch completed here (every job had ended before it was registered) has its completion written to
    the outbox in the same script; the caller publishes :func:`producer.outbox.batch_completion`.
    """
    prefix, link = _split(keys.job_batch("\0"))
    ended = _split(keys.job_ended("\0"))[1]
    completion = outbox.batch_completion(batch_id)
    completed = False
    for start in range(0, len(jobs), LINK_CHUNK):
        pairs = [item for job_id, line in jobs[start:start + LINK_CHUNK] for item in (job_id, line)]
        status, value, _ = client.eval(
            _LINK_JOBS, 4, keys.batch_pending(batch_id), keys.batch_jobs(batch_id),
            keys.outbox_entry(completion.id), keys.OUTBOX_DUE, batch_id, keys.JOB_KEY_TTL_S, prefix, link, ended,
            completion.id, completion.task, completion.kwargs_json(), outbox.FIRST_PUBLISH_GRACE_S, *pairs,
        )
        if _text(status) == "taken":
            return completed, _text(value)
        completed = completed or _text(value) == "1"
    return completed, None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")

"""The outbox: every follow-up of a job's end (its webhook, its batch's completion) kept in Redis until done.

An entry is written in the same Lua script that records why it exists (:func:`producer.ledger.settle` sets
the job's ``ended`` marker and writes the job's webhook and, for a batch's last job, the completion;
recording a completion writes the batch's webhook), so no end is ever recorded without its follow-ups.
Publishing a message for an entry is only an optimisation: the hooks worker's reconciler
(worker/hooks/reconciler.py) republishes every entry that is due and not in progress, so a publish lost
to a broker hiccup, a dead hooks worker or a broker restart costs a delay, never the delivery.

Each entry (``dance:outbox:entry:<id>``, a hash) is keyed by its webhook id (``msg_job_<job>``,
``msg_batch_<batch>``) or completion id (``batch-completed-<batch>``); ``dance:outbox:due`` scores it by when
it is next due. Its ``state`` is one of:

* ``queued``: a message is out; due again (republished) if nobody claims it in time;
* ``claimed``: a delivery is in progress; due again when the claim expires (its holder died);
* ``waiting``: an attempt failed and the next is due at the score (the backoff of the hooks worker);
* ``delivered`` / ``given_up``: done; the hash stays a while so that a late duplicate finds it.

A message is only ever a request to try the entry now: :func:`claim` admits it when the entry is queued, or
its due time has passed, and drops it otherwise, so duplicates (a republish, a visibility-timeout restore)
never make an extra attempt. Attempts are counted in the entry; after the last, it is given up and listed
in ``dance:outbox:given_up`` with its last error's code, for operators.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery

from producer import keys

#: The queue of webhook deliveries and batch completions, consumed by ``dance hooks-worker``.
HOOKS_QUEUE = "dance.webhooks"
#: Delivers one signed webhook (job or batch); the hooks worker registers it.
WEBHOOK_TASK = "dance.webhook"
#: Records a batch's completion and writes its webhook to the outbox; done exactly once per batch.
BATCH_COMPLETED_TASK = "dance.batch_completed"
#: Id prefix of a batch's completion entry (and of its task id).
COMPLETION_PREFIX = "batch-completed-"
#: How long a new entry waits for the message its writer publishes at once to be claimed before the
#: reconciler publishes it again, in seconds; a duplicate costs one dropped message, a lost one this delay.
FIRST_PUBLISH_GRACE_S = 10.0
#: How long a delivered or given-up entry stays readable, in seconds (7 days, as the job keys).
DONE_TTL_S = keys.JOB_KEY_TTL_S
#: Entries the reconciler takes in one Lua call, so one call never blocks Redis for long.
TAKE_LIMIT = 100
#: A publish retries briefly; the outbox, not this retry, is what makes the delivery certain.
PUBLISH_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}
#: Entry states.
QUEUED, CLAIMED, WAITING, DELIVERED, GIVEN_UP = "queued", "claimed", "waiting", "delivered", "given_up"

#: Lua shared by every script that writes entries. Times come from Redis (TIME), so producers, GPU workers
#: and hooks workers on different machines agree on when an entry is due.
LUA_LIB = """
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function outbox_put(key, due_key, id, task, task_id, kwargs, grace_s, ttl)
  if redis.call('EXISTS', key) == 1 then return 0 end
  local now = now_s()
  redis.call('HSET', key, 'task', task, 'task_id', task_id, 'kwargs', kwargs, 'state', 'queued',
             'attempts', 0, 'created_at', now)
  redis.call('EXPIRE', key, ttl)
  redis.call('ZADD', due_key, now + tonumber(grace_s), id)
  return 1
end
local function outbox_done(key, due_key, id, token, state, ttl)
  local fields = redis.call('HMGET', key, 'state', 'token')
  if (fields[1] ~= 'claimed' and fields[1] ~= 'queued') or fields[2] ~= token then return 0 end
  redis.call('HSET', key, 'state', state, 'done_at', now_s())
  redis.call('EXPIRE', key, ttl)
  redis.call('ZREM', due_key, id)
  return 1
end
"""

# KEYS: entry, due, given up. ARGV: id, token, claim_s, max attempts, done ttl.
_CLAIM = LUA_LIB + """
local key, due_key, id = KEYS[1], KEYS[2], ARGV[1]
local state = redis.call('HGET', key, 'state')
if not state or state == 'delivered' or state == 'given_up' then return {'gone', 0, ''} end
local now = now_s()
local due = tonumber(redis.call('ZSCORE', due_key, id) or '0')
if state ~= 'queued' and due > now then return {'busy', 0, ''} end
local attempts = tonumber(redis.call('HGET', key, 'attempts') or '0')
local last = redis.call('HGET', key, 'last_code') or ''
if attempts >= tonumber(ARGV[4]) then
  redis.call('HSET', key, 'state', 'given_up', 'done_at', now)
  redis.call('EXPIRE', key, ARGV[5])
  redis.call('ZREM', due_key, id)
  redis.call('ZADD', KEYS[3], now, id)
  return {'given_up', attempts, last}
end
attempts = redis.call('HINCRBY', key, 'attempts', 1)
redis.call('HSET', key, 'state', 'claimed', 'token', ARGV[2])
redis.call('ZADD', due_key, now + tonumber(ARGV[3]), id)
return {'claimed', attempts, last}
"""

# KEYS: entry, due. ARGV: id, token, delay_s, code, message.
_RETRY_LATER = LUA_LIB + """
local fields = redis.call('HMGET', KEYS[1], 'state', 'token')
if fields[1] ~= 'claimed' or fields[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'waiting', 'last_code', ARGV[4], 'last_error', ARGV[5])
redis.call('ZADD', KEYS[2], now_s() + tonumber(ARGV[3]), ARGV[1])
return 1
"""

# KEYS: entry, due. ARGV: id, token, ttl.
_DELIVERED = LUA_LIB + "return outbox_done(KEYS[1], KEYS[2], ARGV[1], ARGV[2], 'delivered', ARGV[3])"

# KEYS: entry, due, given up. ARGV: id, token, ttl, code, message.
_GIVE_UP = LUA_LIB + """
if outbox_done(KEYS[1], KEYS[2], ARGV[1], ARGV[2], 'given_up', ARGV[3]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_code', ARGV[4], 'last_error', ARGV[5])
local now = now_s()
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[3]))
return 1
"""

# KEYS: due. ARGV: entry key prefix, republish_after_s, limit.
_TAKE_DUE = LUA_LIB + """
local now = now_s()
local taken = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))) do
  local fields = redis.call('HMGET', ARGV[1] .. id, 'state', 'task', 'task_id', 'kwargs')
  if not fields[1] or fields[1] == 'delivered' or fields[1] == 'given_up' then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('HSET', ARGV[1] .. id, 'state', 'queued')
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    table.insert(taken, {id, fields[2], fields[3], fields[4]})
  end
end
return taken
"""


@dataclass(frozen=True)
class Entry:
    """One follow-up to deliver: which task to run, under which task id, with which arguments."""

    id: str
    task: str
    task_id: str
    kwargs: dict[str, Any]

    def kwargs_json(self) -> str:
        return json.dumps(self.kwargs, sort_keys=True)


@dataclass(frozen=True)
class Claim:
    """What :func:`claim` found: ``claimed`` (go on, as attempt ``attempt``), ``gone``, ``busy`` or ``given_up``."""

    status: str
    entry_id: str
    token: str
    attempt: int
    #: The code of the last failed attempt ('' before any).
    last_code: str = ""

    @property
    def claimed(self) -> bool:
        return self.status == CLAIMED


def webhook_id(kind: str, subject: str) -> str:
    """The ``webhook-id`` of a job's or a batch's webhook: the same on every attempt, and its entry's id."""
    return f"msg_{kind}_{subject}"


def job_webhook(job_id: str) -> Entry:
    return Entry(webhook_id("job", job_id), WEBHOOK_TASK, f"webhook-job-{job_id}", {"kind": "job", "subject": job_id})


def batch_webhook(batch_id: str) -> Entry:
    return Entry(webhook_id("batch", batch_id), WEBHOOK_TASK, f"webhook-batch-{batch_id}",
                 {"kind": "batch", "subject": batch_id})


def batch_completion(batch_id: str) -> Entry:
    entry_id = COMPLETION_PREFIX + batch_id
    return Entry(entry_id, BATCH_COMPLETED_TASK, entry_id, {"batch_id": batch_id})


def entry_prefix() -> str:
    """The part of every entry key before its id, for Lua scripts that build entry keys."""
    return keys.outbox_entry("")


def claim(client: redis.Redis, entry_id: str, claim_s: float, max_attempts: int) -> Claim:
    """Claim the entry for one attempt, pushing its due time to ``now + claim_s``; see the module docstring."""
    token = uuid.uuid4().hex
    status, attempt, last = client.eval(
        _CLAIM, 3, keys.outbox_entry(entry_id), keys.OUTBOX_DUE, keys.OUTBOX_GIVEN_UP,
        entry_id, token, claim_s, max_attempts, DONE_TTL_S,
    )
    return Claim(_text(status), entry_id, token, int(attempt), _text(last))


def delivered(client: redis.Redis, held: Claim) -> bool:
    """Mark the entry delivered; False if the claim was lost meanwhile (it expired and another took over)."""
    return bool(client.eval(_DELIVERED, 2, keys.outbox_entry(held.entry_id), keys.OUTBOX_DUE,
                            held.entry_id, held.token, DONE_TTL_S))


def retry_later(client: redis.Redis, held: Claim, delay_s: float, code: str, message: str) -> bool:
    """Make the entry due again in ``delay_s``: the reconciler publishes it then (no message waits meanwhile)."""
    return bool(client.eval(_RETRY_LATER, 2, keys.outbox_entry(held.entry_id), keys.OUTBOX_DUE,
                            held.entry_id, held.token, delay_s, code, message))


def give_up(client: redis.Redis, held: Claim, code: str, message: str) -> bool:
    """Stop trying the entry and list it in ``dance:outbox:given_up`` with its code."""
    return bool(client.eval(_GIVE_UP, 3, keys.outbox_entry(held.entry_id), keys.OUTBOX_DUE, keys.OUTBOX_GIVEN_UP,
                            held.entry_id, held.token, DONE_TTL_S, code, message))


def take_due(client: redis.Redis, republish_after_s: float, limit: int = TAKE_LIMIT) -> list[Entry]:
    """Entries due now, each marked ``queued`` and due again in ``republish_after_s``: the caller publishes them."""
    rows = client.eval(_TAKE_DUE, 1, keys.OUTBOX_DUE, entry_prefix(), republish_after_s, limit)
    return [Entry(_text(i), _text(task), _text(task_id), json.loads(_text(kwargs) or "{}"))
            for i, task, task_id, kwargs in rows]


def publish(app: Celery, entry: Entry) -> None:
    """Send the entry's message to :data:`HOOKS_QUEUE`; raises kombu's ``OperationalError`` if the broker is away."""
    app.send_task(entry.task, kwargs=entry.kwargs, task_id=entry.task_id, queue=HOOKS_QUEUE,
                  routing_key=HOOKS_QUEUE, retry=True, retry_policy=PUBLISH_RETRY_POLICY)


def record(client: redis.Redis, entry_id: str) -> dict[str, str]:
    """The entry's hash as text (state, attempts, last_code, ...); empty once it expired or if never written."""
    return {_text(k): _text(v) for k, v in client.hgetall(keys.outbox_entry(entry_id)).items()}


def given_up(client: redis.Redis) -> list[dict[str, str]]:
    """Every entry given up on that is still kept, oldest first, each with its id and record."""
    return [{"id": _text(i), **record(client, _text(i))} for i in client.zrange(keys.OUTBOX_GIVEN_UP, 0, -1)]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")

"""The job ledger on a real Redis: every end counted once, a batch completed once, whoever settles."""

from __future__ import annotations

import json

import redis

from producer import keys, outbox
from producer.ledger import CANCELLED, FAILED, SUCCEEDED, Outcome, create_batch, link_jobs, settle


def test_a_job_settled_twice_is_counted_once_and_tells_its_callback_once(redis_db: str) -> None:
    # Given a job with a callback URL, seen to end by a worker's revoke and by the producer's cancel
    client = redis.Redis.from_url(redis_db)
    client.set(keys.job_callback("j1"), "https://hooks.example/j1")
    first = settle(client, "j1", Outcome(CANCELLED, "job.cancelled"))
    second = settle(client, "j1", Outcome(CANCELLED, "job.cancelled"))
    # Then only the first settler goes on, and it alone gets the callback URL
    assert first.first and first.callback_url == "https://hooks.example/j1" and first.batch_id is None
    assert not second.first and second.callback_url is None


def test_the_last_job_of_a_batch_completes_it_exactly_once(redis_db: str) -> None:
    # Given a batch of three jobs
    client = redis.Redis.from_url(redis_db)
    assert create_batch(client, "b", "fp", 3, None) == "created"
    assert link_jobs(client, "b", [("b-1", 1), ("b-2", 2), ("b-3", 3)]) == (False, None)
    # When they end, one of them twice
    ends = [settle(client, job, Outcome(outcome))
            for job, outcome in (("b-1", SUCCEEDED), ("b-2", FAILED), ("b-2", FAILED), ("b-3", CANCELLED))]
    # Then exactly one settle completed the batch: the last job's
    assert [end.batch_completed for end in ends] == [False, False, False, True]
    assert ends[-1].batch_remaining == 0 and client.get(keys.batch_pending("b")) == b"0"


def test_a_job_that_ended_before_its_batch_was_registered_counts_at_once(redis_db: str) -> None:
    # Given a job submitted and ended on its own
    client = redis.Redis.from_url(redis_db)
    settle(client, "solo", Outcome(SUCCEEDED))
    # When a batch of just that job is registered (a rerun that names it with its job_id)
    create_batch(client, "late", "fp", 1, None)
    completed, taken = link_jobs(client, "late", [("solo", 1)])
    # Then linking completes the batch, and a second registration changes nothing
    assert (completed, taken) == (True, None)
    assert link_jobs(client, "late", [("solo", 1)]) == (False, None)
    assert create_batch(client, "late", "fp", 1, None) == "exists"
    assert create_batch(client, "late", "other", 1, None) == "mismatch"


def test_a_job_of_one_batch_cannot_join_another(redis_db: str) -> None:
    client = redis.Redis.from_url(redis_db)
    create_batch(client, "one", "fp1", 1, None)
    link_jobs(client, "one", [("shared", 1)])
    create_batch(client, "two", "fp2", 2, None)
    assert link_jobs(client, "two", [("fresh", 1), ("shared", 2)]) == (False, "shared")
    assert client.get(keys.job_batch("fresh")) is None  # nothing of the refused chunk was linked


def test_the_end_of_a_batchs_last_job_writes_its_webhook_and_the_completion_to_the_outbox(redis_db: str) -> None:
    # Given a batch of two jobs, the last of which has a callback URL
    client = redis.Redis.from_url(redis_db)
    create_batch(client, "ob", "fp", 2, None)
    link_jobs(client, "ob", [("ob-1", 1), ("ob-2", 2)])
    client.set(keys.job_callback("ob-2"), "https://hooks.example/ob-2")
    # When both end, the last one twice
    first = settle(client, "ob-1", Outcome(SUCCEEDED))
    last = settle(client, "ob-2", Outcome(FAILED, "input.not_found"))
    again = settle(client, "ob-2", Outcome(FAILED, "input.not_found"))
    # Then only the last job's first settle wrote follow-ups: its webhook and the batch's completion, both in
    # the outbox with a due time, before anything was published
    assert first.followups == () and again.followups == ()
    assert last.followups == (outbox.job_webhook("ob-2"), outbox.batch_completion("ob"))
    due = dict(client.zrange(keys.OUTBOX_DUE, 0, -1, withscores=True))
    assert set(due) == {b"msg_job_ob-2", b"batch-completed-ob"}
    assert outbox.record(client, "msg_job_ob-2")["state"] == outbox.QUEUED
    assert json.loads(outbox.record(client, "batch-completed-ob")["kwargs"]) == {"batch_id": "ob"}


def test_a_batch_completed_while_its_jobs_are_linked_has_its_completion_in_the_outbox(redis_db: str) -> None:
    # Given a job that ended on its own
    client = redis.Redis.from_url(redis_db)
    settle(client, "alone", Outcome(SUCCEEDED))
    # When a batch of just that job is registered
    create_batch(client, "later", "fp", 1, None)
    assert link_jobs(client, "later", [("alone", 1)]) == (True, None)
    # Then its completion waits in the outbox
    assert outbox.record(client, "batch-completed-later")["task"] == outbox.BATCH_COMPLETED_TASK

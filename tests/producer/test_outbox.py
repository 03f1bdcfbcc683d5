"""The outbox on a real Redis: claims admit one attempt at a time, count it, and drop duplicates."""

from __future__ import annotations

import redis

from producer import keys, outbox
from producer.ledger import Outcome, settle

#: A claim long enough that it cannot expire during a test, in seconds.
LONG_CLAIM_S = 600.0


def _job_with_webhook(client: redis.Redis, job_id: str) -> str:
    client.set(keys.job_callback(job_id), f"https://hooks.example/{job_id}")
    settle(client, job_id, Outcome("succeeded"))
    return outbox.webhook_id("job", job_id)


def test_a_second_message_for_an_entry_being_delivered_is_dropped(redis_db: str) -> None:
    # Given a job's webhook in the outbox, claimed by one delivery
    client = redis.Redis.from_url(redis_db)
    entry = _job_with_webhook(client, "dup")
    held = outbox.claim(client, entry, LONG_CLAIM_S, 3)
    # When a second message for it arrives (a republish, a visibility-timeout restore)
    duplicate = outbox.claim(client, entry, LONG_CLAIM_S, 3)
    # Then the first holds attempt 1 and the duplicate is dropped without an attempt
    assert (held.status, held.attempt) == (outbox.CLAIMED, 1)
    assert duplicate.status == "busy" and outbox.record(client, entry)["attempts"] == "1"
    # and once delivered, any later message finds it gone
    assert outbox.delivered(client, held)
    assert outbox.claim(client, entry, LONG_CLAIM_S, 3).status == "gone"
    assert outbox.record(client, entry)["state"] == outbox.DELIVERED
    assert client.zscore(keys.OUTBOX_DUE, entry) is None


def test_a_retry_waits_in_the_outbox_and_a_stale_message_cannot_start_it_early(redis_db: str) -> None:
    # Given a webhook whose first attempt failed and whose retry is due in ten minutes
    client = redis.Redis.from_url(redis_db)
    entry = _job_with_webhook(client, "later")
    held = outbox.claim(client, entry, LONG_CLAIM_S, 3)
    assert outbox.retry_later(client, held, LONG_CLAIM_S, "webhook.server_error", "503")
    # When a stale copy of its message arrives, and the reconciler looks for due entries
    stale = outbox.claim(client, entry, LONG_CLAIM_S, 3)
    due = outbox.take_due(client, republish_after_s=LONG_CLAIM_S)
    # Then neither starts an attempt: the entry waits with its code
    assert stale.status == "busy" and due == []
    assert outbox.record(client, entry)["last_code"] == "webhook.server_error"


def test_the_reconciler_takes_a_due_entry_once_and_its_message_may_claim_it(redis_db: str) -> None:
    # Given a webhook whose retry is due now
    client = redis.Redis.from_url(redis_db)
    entry = _job_with_webhook(client, "now")
    held = outbox.claim(client, entry, LONG_CLAIM_S, 3)
    outbox.retry_later(client, held, 0, "webhook.timeout", "slow")
    # When two reconcilers look for due entries one after the other
    first = outbox.take_due(client, republish_after_s=LONG_CLAIM_S)
    second = outbox.take_due(client, republish_after_s=LONG_CLAIM_S)
    # Then only the first takes it, with what its message needs, and that message claims attempt 2
    assert first == [outbox.job_webhook("now")] and second == []
    again = outbox.claim(client, entry, LONG_CLAIM_S, 3)
    assert (again.status, again.attempt) == (outbox.CLAIMED, 2)
    # and the first claim, long replaced, can no longer mark it delivered
    assert not outbox.delivered(client, held)


def test_an_entry_out_of_attempts_is_given_up_and_listed_with_its_code(redis_db: str) -> None:
    # Given a webhook allowed two attempts, whose second holder died (its claim expired) after a 503
    client = redis.Redis.from_url(redis_db)
    entry = _job_with_webhook(client, "dead")
    held = outbox.claim(client, entry, LONG_CLAIM_S, 2)
    outbox.retry_later(client, held, 0, "webhook.server_error", "503")
    outbox.claim(client, entry, 0, 2)
    # When its message is delivered again
    last = outbox.claim(client, entry, LONG_CLAIM_S, 2)
    # Then no third attempt starts: it is given up, listed for operators with the last code
    assert (last.status, last.attempt, last.last_code) == (outbox.GIVEN_UP, 2, "webhook.server_error")
    [listed] = outbox.given_up(client)
    assert (listed["id"], listed["state"], listed["last_code"]) == (entry, outbox.GIVEN_UP, "webhook.server_error")
    assert client.ttl(keys.outbox_entry(entry)) > 0


def test_a_delivery_that_fails_for_good_is_given_up_at_once(redis_db: str) -> None:
    # Given a webhook claimed for its first attempt
    client = redis.Redis.from_url(redis_db)
    entry = _job_with_webhook(client, "refused")
    held = outbox.claim(client, entry, LONG_CLAIM_S, 8)
    # When the endpoint refuses it with a 4xx
    assert outbox.give_up(client, held, "webhook.http_error", "404")
    # Then it is listed as given up and no message can start it again
    assert [e["last_code"] for e in outbox.given_up(client)] == ["webhook.http_error"]
    assert outbox.claim(client, entry, LONG_CLAIM_S, 8).status == "gone"

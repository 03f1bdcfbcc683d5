"""The outbox end to end: webhooks and batch completions survive lost publishes, dead hooks workers, GPU
workers' visibility-timeout sweeps and a Redis restart, and each is delivered once per attempt."""

from __future__ import annotations

import itertools
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.result import AsyncResult

from producer import keys, ledger, outbox
from producer.celeryconf import PRIORITY_SEPARATOR, PRIORITY_STEPS, make_app, shared_config
from producer.webhooks import verify
from tests.fixtures.workers import Cluster
from tests.support.jobs import dance_request, queued_messages
from tests.support.ops import WEBHOOK_SECRET, Delivery, Endpoint, WebhookReceiver, start_gpu_worker, start_hooks_worker
from tests.support.processes import free_port, wait_until
from tests.worker.test_reliability import RestartableRedis
from worker.telemetry.outcomes import settle_retrying

#: The GPU worker's visibility timeout in the retry test, in seconds (the shortest it accepts).
GPU_VISIBILITY_TIMEOUT_S = 4
#: The hooks worker's pause before a retry there: more than three of those timeouts, after jitter
#: (which shortens a pause by up to a fifth).
RETRY_PAUSE_S = 15.5
#: What the hooks workers (both write one log) say when they drop a copy of the batch's completion.
DROPPED_COMPLETION = "batch-completed-b-kill: duplicate message dropped"
#: How long a test waits for the outbox to settle an entry, in seconds.
OUTBOX_TIMEOUT_S = 60.0


def _state(broker: redis.Redis, entry_id: str) -> str | None:
    return outbox.record(broker, entry_id).get("state")


def _hooks_queue_empty(broker_url: str) -> bool:
    return queued_messages(broker_url, ledger.HOOKS_QUEUE) == 0


def _answered(deliveries: list[Delivery], path: str) -> list[Delivery]:
    return [d for d in deliveries if d.path == path and d.answered is not None and d.answered < 300]


def test_a_webhook_retried_past_the_gpu_workers_visibility_timeout_reaches_its_endpoint_once_per_attempt(
    cluster: Cluster, comfysim: Any, media_server: Any, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    # Given a GPU worker sweeping unacked messages with a 4 s visibility timeout in the same Redis database,
    # a hooks worker that waits 15.5 s before each retry (3 attempts), and an endpoint that answers 503 twice
    sim = comfysim(exec_s=0.1)
    start_gpu_worker(cluster, "w", sim.url, DANCE_VISIBILITY_TIMEOUT_S=str(GPU_VISIBILITY_TIMEOUT_S))
    start_hooks_worker(cluster, DANCE_WEBHOOK_ATTEMPTS="3", DANCE_WEBHOOK_RETRY_BASE_S=str(RETRY_PAUSE_S),
                       DANCE_WEBHOOK_RETRY_CAP_S=str(RETRY_PAUSE_S))
    url = receiver.url("/flaky", Endpoint(fail_first=2))
    broker = redis.Redis.from_url(cluster.broker_url)
    with cluster.client() as client:
        # When a job queued where no worker looks is cancelled (the producer settles it) and its webhook fails
        handle = client.submit(dance_request(media_server, tmp_path), job_id="slow-hook", queue="elsewhere",
                               callback_url=url)
        handle.cancel()
        receiver.wait_for(lambda got: _answered(got, "/flaky"), "the third attempt to succeed", OUTBOX_TIMEOUT_S)
        wait_until(lambda: _state(broker, "msg_job_slow-hook") == outbox.DELIVERED and
                   _hooks_queue_empty(cluster.broker_url), 30, "the delivery to be recorded")
        result = AsyncResult("webhook-job-slow-hook", app=client.app).result
    # Then the endpoint was hit exactly as often as attempts were counted, each retry after a pause longer
    # than three visibility timeouts, with one webhook id throughout
    hits = receiver.to("/flaky")
    assert [d.answered for d in hits] == [503, 503, 204]
    assert outbox.record(broker, "msg_job_slow-hook")["attempts"] == "3" and result["attempts"] == 3
    gaps = [later.at_s - earlier.at_s for earlier, later in itertools.pairwise(hits)]
    assert all(gap > 3 * GPU_VISIBILITY_TIMEOUT_S for gap in gaps), gaps
    assert {d.headers["webhook-id"] for d in hits} == {"msg_job_slow-hook"}
    verify(WEBHOOK_SECRET, hits[-1].headers, hits[-1].body)


def test_webhooks_whose_publish_was_lost_are_delivered_once_by_the_reconciler(
    cluster: Cluster, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    # Given two jobs with callbacks that end while no hooks worker runs: the first one's message is deleted
    # from the queue right after it was published, the second one's publish meets an unreachable broker
    broker = redis.Redis.from_url(cluster.broker_url)
    for job in ("lost-1", "lost-2"):
        broker.set(keys.job_callback(job), receiver.url(f"/{job}"))
    with cluster.client() as client:
        ledger.publish(client.app, ledger.settle(broker, "lost-1", ledger.Outcome(ledger.SUCCEEDED)).followups)
        assert queued_messages(cluster.broker_url, ledger.HOOKS_QUEUE) == 1
        broker.delete(ledger.HOOKS_QUEUE, *[f"{ledger.HOOKS_QUEUE}{PRIORITY_SEPARATOR}{s}" for s in PRIORITY_STEPS])
    dead = make_app("dead-broker", shared_config(f"redis://127.0.0.1:{free_port()}/0", cluster.broker_url, 0))
    with caplog.at_level(logging.WARNING, logger="producer.ledger"):
        ledger.publish(dead, ledger.settle(broker, "lost-2", ledger.Outcome(ledger.FAILED, "x")).followups)
    assert "reconciler will publish it" in caplog.text
    # When a hooks worker starts
    start_hooks_worker(cluster)
    # Then its reconciler publishes both, and each endpoint gets exactly one delivery
    for job in ("lost-1", "lost-2"):
        wait_until(lambda job=job: _state(broker, f"msg_job_{job}") == outbox.DELIVERED, OUTBOX_TIMEOUT_S,
                   f"the webhook of {job}")
    wait_until(lambda: _hooks_queue_empty(cluster.broker_url), 30, "the hooks queue to drain")
    assert [len(receiver.to(f"/{job}")) for job in ("lost-1", "lost-2")] == [1, 1]
    assert [outbox.record(broker, f"msg_job_{job}")["attempts"] for job in ("lost-1", "lost-2")] == ["1", "1"]
    assert [receiver.to(f"/{job}")[0].payload["data"]["job_id"] for job in ("lost-1", "lost-2")] == ["lost-1", "lost-2"]


def test_a_batch_completes_once_although_its_completion_is_published_twice_and_its_hooks_worker_is_killed(
    cluster: Cluster, receiver: WebhookReceiver
) -> None:
    # Given a batch of one job whose callback hangs on its first request, and a hooks worker
    broker = redis.Redis.from_url(cluster.broker_url)
    ledger.create_batch(broker, "b-kill", "fp", 1, receiver.url("/batch", Endpoint(hang_first=1)))
    ledger.link_jobs(broker, "b-kill", [("b-kill-1", 1)])
    hooks = start_hooks_worker(cluster)
    with cluster.client() as client:
        # When the job ends and its completion is published twice
        settled = ledger.settle(broker, "b-kill-1", ledger.Outcome(ledger.SUCCEEDED))
        assert settled.followups == (outbox.batch_completion("b-kill"),)
        ledger.publish(client.app, settled.followups)
        ledger.publish(client.app, settled.followups)
        # and the hooks worker is killed while it delivers the batch's webhook, then started again
        receiver.wait_for(lambda got: receiver.hanging >= 1, "the batch webhook to hang")
        hooks.kill()
        hooks = start_hooks_worker(cluster)
        receiver.wait_for(lambda got: _answered(got, "/batch"), "the batch webhook", OUTBOX_TIMEOUT_S)
        wait_until(lambda: _state(broker, "msg_batch_b-kill") == outbox.DELIVERED, 30, "the delivery to be recorded")
        # and, once it is done, a late copy of the completion arrives (after the second copy, dropped already)
        ledger.publish(client.app, settled.followups)
        wait_until(lambda: hooks.log().count(DROPPED_COMPLETION) == 2, 30, "both extra copies to be dropped")
        result = AsyncResult("webhook-batch-b-kill", app=client.app).result
    # Then the completion was recorded once, in one attempt, and the webhook was sent until it got an answer
    # (the killed attempt and its retry, one webhook id), and never again
    assert broker.hget(keys.batch_meta("b-kill"), "completions") == b"1"
    assert outbox.record(broker, "batch-completed-b-kill")["attempts"] == "1"
    deliveries = receiver.to("/batch")
    assert [d.answered for d in deliveries] == [None, 204] and result["attempts"] == 2
    assert {d.headers["webhook-id"] for d in deliveries} == {"msg_batch_b-kill"}
    assert deliveries[-1].payload["type"] == "batch.completed"
    assert (deliveries[-1].payload["data"]["batch_id"], deliveries[-1].payload["data"]["total"]) == ("b-kill", 1)


def test_a_job_end_recorded_across_a_redis_restart_leaves_the_batch_counter_at_zero_and_completes_the_batch(
    tmp_path: Path, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a batch of one job on a Redis with AOF
    server = RestartableRedis(tmp_path / "redis").start()
    storage = tmp_path / "storage"
    storage.mkdir()
    cluster = Cluster(broker_url=server.url, root=tmp_path, storage_url=storage.as_uri())
    broker = redis.Redis.from_url(server.url)
    ledger.create_batch(broker, "b-restart", "fp", 1, receiver.url("/batch"))
    ledger.link_jobs(broker, "b-restart", [("b-restart-1", 1)])
    try:
        # When the job ends while Redis is down, and Redis comes back while its end is being retried
        server.stop()
        ended: list[ledger.Settled | None] = []
        with caplog.at_level(logging.WARNING, logger="worker.telemetry.outcomes"):
            settling = threading.Thread(target=lambda: ended.append(
                settle_retrying(broker, "b-restart-1", ledger.Outcome(ledger.SUCCEEDED))))
            settling.start()
            wait_until(lambda: "retrying" in caplog.text, 30, "the settle to fail once")
            server.start()
            settling.join(60)
        # Then the end was recorded once Redis answered: the counter is at 0 and the completion is in the outbox
        [settled] = ended
        assert settled is not None and settled.batch_completed
        assert broker.get(keys.batch_pending("b-restart")) == b"0"
        # and a hooks worker completes the batch and sends its webhook once
        with cluster.client() as client:
            ledger.publish(client.app, settled.followups)
        start_hooks_worker(cluster)
        receiver.wait_for(lambda got: _answered(got, "/batch"), "the batch webhook", OUTBOX_TIMEOUT_S)
        wait_until(lambda: _state(broker, "msg_batch_b-restart") == outbox.DELIVERED, 30, "the delivery")
        assert broker.hget(keys.batch_meta("b-restart"), "completions") == b"1"
        assert len(receiver.to("/batch")) == 1
    finally:
        for process in cluster.workers:
            process.stop(timeout_s=15)
        server.stop()

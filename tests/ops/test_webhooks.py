"""Webhooks leave from the hooks worker, never from the GPU path: slow or failing endpoints cost no GPU time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis
from celery.result import AsyncResult

from producer import keys, ledger, outbox
from producer.errors import WEBHOOK_BLOCKED, WEBHOOK_SERVER_ERROR
from producer.webhooks import verify
from tests.fixtures.workers import Cluster
from tests.support.jobs import dance_request
from tests.support.ops import WEBHOOK_SECRET, Endpoint, WebhookReceiver, start_gpu_worker, start_hooks_worker
from tests.support.processes import wait_until

#: Timeout of one delivery attempt in these tests, in seconds.
DELIVERY_TIMEOUT_S = 20


def test_jobs_keep_completing_while_their_callbacks_hang_or_fail(
    cluster: Cluster, comfysim: Any, media_server: Any, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    # Given a GPU worker, a hooks worker with a 20 s delivery timeout and 3 attempts, an endpoint that
    # hangs and one that answers 500
    sim = comfysim(exec_s=0.1)
    gpu = start_gpu_worker(cluster, "w", sim.url)
    start_hooks_worker(cluster, DANCE_WEBHOOK_TIMEOUT_S=str(DELIVERY_TIMEOUT_S), DANCE_WEBHOOK_ATTEMPTS="3")
    hang = receiver.url("/hang", Endpoint(hang=True))
    broken = receiver.url("/broken", Endpoint(status=500))
    request = dance_request(media_server, tmp_path)
    with cluster.client() as client:
        # When four jobs run one after another, each with one of those callbacks
        began = time.monotonic()
        handles = [client.submit(request, job_id=f"hooked-{n}", callback_url=hang if n % 2 else broken)
                   for n in range(4)]
        results = [handle.result(timeout_s=30) for handle in handles]
        # Then every job succeeded, all four in less time than one hanging delivery may take,
        # while the hanging deliveries were still open
        assert all(result["status"] == "succeeded" for result in results)
        assert time.monotonic() - began < DELIVERY_TIMEOUT_S / 2
        assert receiver.hanging >= 1 and not AsyncResult("webhook-job-hooked-1", app=client.app).ready()
        # and the failing endpoint got every attempt, all signed with the same webhook id, then gave up
        for job in ("hooked-0", "hooked-2"):
            outcome = AsyncResult(f"webhook-job-{job}", app=client.app)
            wait_until(outcome.ready, 30, f"the webhook of {job} to give up")
            assert outcome.state == "FAILURE" and outcome.result.code == WEBHOOK_SERVER_ERROR
        attempts = [d for d in receiver.to("/broken") if d.payload["data"]["job_id"] == "hooked-0"]
        assert len(attempts) == 3 and len({d.headers["webhook-id"] for d in attempts}) == 1
        for attempt in attempts:
            verify(WEBHOOK_SECRET, attempt.headers, attempt.body)
    assert gpu.poll() is None and sim.state()["prompts_received"] == 4


def test_a_callback_to_a_loopback_address_is_refused_unless_allow_listed(
    cluster: Cluster, receiver: WebhookReceiver
) -> None:
    # Given a hooks worker with no allow list and a job whose callback points at loopback
    start_hooks_worker(cluster, DANCE_WEBHOOK_ALLOW_HOSTS="")
    broker = redis.Redis.from_url(cluster.broker_url)
    broker.set(keys.job_callback("ssrf-1"), receiver.url("/internal"))
    with cluster.client() as client:
        # When the job ends and its webhook is due
        ledger.publish(client.app, ledger.settle(broker, "ssrf-1", ledger.Outcome(ledger.SUCCEEDED)).followups)
        outcome = AsyncResult("webhook-job-ssrf-1", app=client.app)
        wait_until(outcome.ready, 30, "the webhook task to end")
    # Then it fails at once with the guard's code, nothing reached the address, and operators find it
    # among the entries given up, after one attempt
    assert outcome.state == "FAILURE" and outcome.result.code == WEBHOOK_BLOCKED
    assert outcome.result.details["reason"] == "loopback"
    assert receiver.deliveries == []
    [given_up] = outbox.given_up(broker)
    assert (given_up["id"], given_up["last_code"], given_up["attempts"]) == ("msg_job_ssrf-1", WEBHOOK_BLOCKED, "1")

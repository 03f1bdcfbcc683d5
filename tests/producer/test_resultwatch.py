"""A waiting producer is woken by the result backend's announcement of a new state, on a real Redis."""

from __future__ import annotations

import threading

import redis

from producer import keys
from producer.client import DanceClient
from producer.resultwatch import ResultWatch
from producer.settings import ProducerSettings
from tests.support.processes import free_port, wait_until

#: A wait far longer than any test may take: a watch that returns True before it was notified.
LONG_WAIT_S = 60.0


def _client(url: str) -> DanceClient:
    return DanceClient(ProducerSettings(broker_url=url, result_backend=url))


def test_a_watch_returns_as_soon_as_the_backend_stores_a_state_of_its_job(redis_db: str) -> None:
    # Given a watch on one job, subscribed before the state changes
    with _client(redis_db) as client, ResultWatch(client.app.backend, "job-1") as watch:
        assert watch.subscribed
        # When the result backend stores that job's PROGRESS (a worker's update_state does exactly this)
        client.app.backend.store_result("job-1", {"stage": "downloading"}, "PROGRESS")
        # Then a wait with a minute to spare returns at once, notified
        assert watch.wait(LONG_WAIT_S) is True


def test_a_watch_is_not_woken_by_another_jobs_state(redis_db: str) -> None:
    # Given a watch on one job
    with _client(redis_db) as client, ResultWatch(client.app.backend, "job-a") as watch:
        # When another job's state is stored
        client.app.backend.store_result("job-b", {"stage": "executing"}, "PROGRESS")
        # Then the watch's wait runs out unnotified
        assert watch.wait(0.2) is False


def test_a_watch_whose_backend_is_unreachable_falls_back_to_waiting_the_interval() -> None:
    # Given a result backend on a port nobody listens on
    url = f"redis://127.0.0.1:{free_port()}/0"
    # When a watch is made for a job
    with _client(url) as client, ResultWatch(client.app.backend, "job-x") as watch:
        # Then it has no subscription and its wait is a plain timed wait
        assert not watch.subscribed
        assert watch.wait(0.05) is False


def test_result_returns_the_success_a_worker_stores_while_the_producer_waits(redis_db: str) -> None:
    # Given a submitted job whose producer waits for it
    with _client(redis_db) as client:
        client.redis.set(keys.submitted("job-w"), "dance")
        handle = client.job("job-w")
        channel = client.app.backend.get_key_for_task("job-w")
        outcome: dict[str, object] = {}
        waiter = threading.Thread(target=lambda: outcome.update(handle.result(timeout_s=LONG_WAIT_S)))
        waiter.start()
        # When, once the waiter has subscribed to the job's channel, the worker's SUCCESS lands
        probe = redis.Redis.from_url(redis_db)
        wait_until(lambda: probe.pubsub_numsub(channel)[0][1] >= 1, 10, "the waiter to subscribe")
        client.app.backend.store_result("job-w", {"job_id": "job-w", "status": "succeeded"}, "SUCCESS")
        waiter.join(LONG_WAIT_S)
        # Then the waiter returned that result, and left no subscription behind
        assert not waiter.is_alive()
        assert outcome == {"job_id": "job-w", "status": "succeeded"}
        wait_until(lambda: probe.pubsub_numsub(channel)[0][1] == 0, 10, "the subscription to be gone")

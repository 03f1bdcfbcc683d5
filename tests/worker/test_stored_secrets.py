"""A signed media URL is a working credential: no copy of it outlives the job in Redis (the broker, the
result backend with ``result_extended``, our own keys) or in the task events that Flower stores."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from producer.client import DanceClient
from producer.settings import ProducerSettings
from tests.fixtures.workers import Cluster
from tests.support.jobs import dance_request
from tests.support.processes import wait_until

#: The signed query string's secrets; none may be stored anywhere once the job has run.
TOKEN, CREDENTIAL = "t0ken-5ecret-9f3a", "AKIAQUERYCRED"


class EventLog:
    """Every Celery event on the broker, captured in a thread as Flower captures them."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery(broker=broker_url, set_as_current=False)
        self.events: list[dict[str, Any]] = []
        self.connection = self.app.connection()
        self.receiver = self.app.events.Receiver(self.connection, handlers={"*": self.events.append})
        self.thread = threading.Thread(target=self.receiver.capture, kwargs={"limit": None, "wakeup": False},
                                       name="event-log", daemon=True)

    def stop(self) -> None:
        # kombu's ConsumerMixin checks should_stop between drains (about once a second).
        self.receiver.should_stop = True
        self.thread.join(timeout=10)
        self.connection.release()

    def types(self) -> set[str]:
        return {event["type"] for event in list(self.events)}


@pytest.fixture
def event_log(redis_db: str) -> Iterator[EventLog]:
    log = EventLog(redis_db)
    log.thread.start()
    yield log
    log.stop()


def every_value(client: redis.Redis, key: bytes) -> str:
    """The key's whole value as text, whatever its type."""
    kind = client.type(key).decode()
    readers = {
        "string": lambda: client.get(key),
        "hash": lambda: client.hgetall(key),
        "list": lambda: client.lrange(key, 0, -1),
        "set": lambda: client.smembers(key),
        "zset": lambda: client.zrange(key, 0, -1, withscores=True),
        "stream": lambda: client.xrange(key),
    }
    return repr(readers[kind]()) if kind in readers else ""


def stored_text(redis_url: str) -> dict[str, str]:
    """Every key of every database of the Redis server, with its value as text."""
    databases = int(redis.Redis.from_url(redis_url + "/0").config_get("databases")["databases"])
    found: dict[str, str] = {}
    for db in range(databases):
        client = redis.Redis.from_url(f"{redis_url}/{db}")
        for key in client.scan_iter(count=500):
            found[f"{db}:{key!r}"] = repr(key) + every_value(client, key)
    return found


def test_a_signed_media_urls_token_is_stored_nowhere_in_redis_or_in_task_events(
    cluster: Cluster, redis_url: str, event_log: EventLog, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a worker whose broker and result backend are separate databases, an event capture that is
    # live (it has seen a worker heartbeat), and a request whose image URL carries a signed query string
    backend = f"{redis_url}/1"
    sim = comfysim(exec_s=0.1)
    cluster.start_worker("w", sim.url, CELERY_RESULT_BACKEND=backend)
    wait_until(lambda: "worker-heartbeat" in event_log.types(), 60, "a worker heartbeat on the event bus")
    request = dance_request(media_server, tmp_path)
    request["reference_image"] += f"?X-Amz-Signature={TOKEN}&X-Amz-Credential={CREDENTIAL}"
    client = DanceClient(ProducerSettings(broker_url=cluster.broker_url, result_backend=backend,
                                          storage_url=cluster.storage_url, wait_timeout_s=60.0))
    try:
        # When the job runs to success (the worker really fetched the signed URL)
        handle = client.submit(request)
        assert handle.result(timeout_s=60)["status"] == "succeeded"
        assert media_server.hits("/character.png") == 1
        wait_until(lambda: "task-succeeded" in event_log.types(), 30, "the task-succeeded event")
    finally:
        client.close()
    # Then no key in any database holds the token or the credential
    stored = stored_text(redis_url)
    assert any(key.startswith("1:") and "celery-task-meta" in key for key in stored), "no result meta?"
    leaks = [key for key, text in stored.items() if TOKEN in text or CREDENTIAL in text]
    assert leaks == []
    # and the extended result still names the media, without its query string
    meta = json.loads(redis.Redis.from_url(backend).get(f"celery-task-meta-{handle.id}") or b"{}")
    assert meta["kwargs"]["request"]["reference_image"] == media_server.url("/character.png")
    # and no task event (what Flower shows and stores) carried them either
    events = json.dumps(list(event_log.events), default=str)
    assert {"task-sent", "task-received", "task-started", "task-succeeded"} <= event_log.types()
    assert TOKEN not in events and CREDENTIAL not in events

"""Workers run without gossip and mingle, and keep what ping, cancel, Flower and `dance cluster` need.

That the revoke broadcast still stops a running job on such a worker (every test worker runs without gossip
and mingle) is tests/worker/test_comfy_failures.py
``test_cancelling_a_running_job_interrupts_only_its_prompt_and_ends_revoked``."""

from __future__ import annotations

import threading
from typing import Any

import redis

from producer.client import DanceClient
from tests.fixtures.workers import Cluster
from tests.support.processes import wait_until

#: How long the test listens for a worker's heartbeat (Celery sends one every 2 s), in seconds.
HEARTBEAT_WAIT_S = 20.0


#: The Redis channel kombu publishes a worker's heartbeat on (fanout prefix "/<db>.", exchange, routing key).
HEARTBEAT_CHANNEL = "/0.celeryev/worker.heartbeat"


def heartbeat_receivers(broker_url: str) -> int:
    """How many connections a worker heartbeat published now reaches (PUBLISH answers the count)."""
    return int(redis.Redis.from_url(broker_url).publish(HEARTBEAT_CHANNEL, b"probe"))


def heartbeat_from(client: DanceClient, node_prefix: str) -> dict[str, Any]:
    """The first ``worker-heartbeat`` event of a node whose name starts with ``node_prefix``, received the
    way Flower receives events (an event receiver on the broker)."""
    seen: list[dict[str, Any]] = []

    def of_node() -> list[dict[str, Any]]:
        return [event for event in seen if str(event.get("hostname", "")).startswith(node_prefix)]

    with client.app.connection_for_read() as conn:
        receiver = client.app.events.Receiver(conn, handlers={"worker-heartbeat": seen.append})
        listener = threading.Thread(target=receiver.capture, kwargs={"wakeup": True}, daemon=True)
        listener.start()
        try:
            wait_until(of_node, HEARTBEAT_WAIT_S, "a worker-heartbeat event")
        finally:
            receiver.should_stop = True
            listener.join(HEARTBEAT_WAIT_S)
    return of_node()[0]


def test_two_workers_neither_gossip_nor_mingle_yet_answer_ping_and_send_heartbeats(
    cluster: Cluster, comfysim: Any
) -> None:
    # Given two ready workers on one broker
    sim = comfysim(exec_s=0.1)
    first = cluster.start_worker("a", sim.url)
    first.wait_for_log(" ready.")
    second = cluster.start_worker("b", sim.url)
    second.wait_for_log(" ready.")
    # Then neither asked its peers for their state at start, nor listens to the other's events: a
    # heartbeat reaches nobody (Flower, when it runs, is its one listener)
    assert "mingle" not in first.log() + second.log()
    assert heartbeat_receivers(cluster.broker_url) == 0
    with cluster.client() as client:
        # and both still answer ping, the remote control `dance cluster` and Flower use
        replies = client.app.control.ping(timeout=5.0)
        assert sorted(next(iter(reply)).split("@")[0] for reply in replies) == ["a", "b"]
        # and still send the heartbeats by which Flower tells a worker online
        assert heartbeat_from(client, "b@")["type"] == "worker-heartbeat"

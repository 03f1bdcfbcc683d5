"""Auth and limits of the gateway, over real HTTP against a real gateway process and Redis."""

from __future__ import annotations

import subprocess
from typing import Any

import redis

from tests.fixtures.workers import Cluster
from tests.gateway.conftest import ALICE_KEY, BOB_KEY, StartGateway, gateway_argv
from tests.support.jobs import queued_messages

#: A valid dance request body in the old endpoint's envelope (its media are never fetched: no worker runs).
OLD_BODY = {"input": {"images": {"reference_image": "https://cdn.example.com/alice.png"},
                      "videos": {"dance_video": "https://cdn.example.com/salsa.mp4"}, "prompt": "a dance"}}
#: A one-node API-format graph.
WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}}


def gateway_keys(broker_url: str) -> list[bytes]:
    return sorted(redis.Redis.from_url(broker_url).keys("dance:gw:*"))


def error_of(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


def test_every_route_but_health_needs_a_known_key_and_no_secret_reaches_the_log(
    cluster: Cluster, start_gateway: StartGateway
) -> None:
    # Given a gateway with two keys
    gateway = start_gateway()
    wrong = "not-a-key-of-this-gateway-123456"
    # When routes are called without a key, with a wrong one and with a good one
    health = gateway.call("GET", "/api/v2/health", key=None)
    openapi = gateway.call("GET", "/api/v2/openapi.json", key=None)
    missing = gateway.call("GET", "/api/v2/jobs", key=None)
    bad = gateway.call("POST", "/v2/ep/run", key=wrong, json=OLD_BODY)
    good = gateway.call("GET", "/api/v2/jobs", key=BOB_KEY)
    # Then health and the OpenAPI document are public, the others need the key
    assert health.status_code == 200 and health.json()["auth"] is True
    assert openapi.status_code == 200 and "/api/v2/jobs" in openapi.json()["paths"]
    assert missing.status_code == 401 and error_of(missing)["code"] == "unauthorized"
    assert bad.status_code == 401 and error_of(bad)["details"]["dance_code"] == "gateway.unauthorized"
    assert good.status_code == 200 and good.json() == {"jobs": []}
    # and the refused submit queued nothing, and no secret appears in the gateway's log
    assert queued_messages(cluster.broker_url) == 0 and gateway_keys(cluster.broker_url) == []
    log = gateway.process.log()
    assert '"GET /api/v2/jobs HTTP/1.1" 401' in log
    assert all(secret not in log for secret in (ALICE_KEY, BOB_KEY, wrong))


def test_a_key_limited_to_one_queue_gets_403_for_another_and_nothing_is_queued(
    cluster: Cluster, start_gateway: StartGateway
) -> None:
    # Given bob, who may use only the "dance" queue, and an endpoint routed to queue "wan"
    gateway = start_gateway(DANCE_GATEWAY_ENDPOINT_QUEUES="wan-endpoint=wan")
    # When bob submits to that endpoint and names "wan" in a v2 submit
    runpod = gateway.call("POST", "/v2/wan-endpoint/run", key=BOB_KEY, json=OLD_BODY)
    v2 = gateway.call("POST", "/api/v2/jobs", key=BOB_KEY, json={"workflow": WORKFLOW, "queue": "wan"})
    # Then both are forbidden with the queue named, and nothing was queued or indexed
    for response in (runpod, v2):
        assert response.status_code == 403, response.text
        assert error_of(response)["code"] == "forbidden" and error_of(response)["details"]["queue"] == "wan"
    assert queued_messages(cluster.broker_url, "wan") == 0 and gateway_keys(cluster.broker_url) == []


def test_an_oversized_or_malformed_body_gets_its_typed_error_and_leaves_nothing_behind(
    cluster: Cluster, start_gateway: StartGateway
) -> None:
    # Given a gateway that reads bodies of at most 2 KiB
    gateway = start_gateway(DANCE_GATEWAY_MAX_BODY_BYTES="2048")
    # When bodies too large, not JSON, a UI export, a malformed graph and unsupported fields arrive
    big = gateway.call("POST", "/api/v2/jobs", json={"workflow": WORKFLOW, "pad": "x" * 4096})
    not_json = gateway.call("POST", "/v2/ep/run", data=b"{nope", headers={"Content-Type": "application/json"})
    ui = gateway.call("POST", "/api/v2/jobs", json={"workflow": {"nodes": [], "links": []}})
    graph = gateway.call("POST", "/api/v2/jobs", json={"workflow": {"1": {"inputs": {}}}})
    extra = gateway.call("POST", "/api/v2/jobs", json={"workflow": WORKFLOW, "extra_data": {"k": "v"}})
    old_extra = gateway.call("POST", "/v2/ep/run", json={**OLD_BODY, "webhook": "https://hooks.example.com"})
    bad_request = gateway.call("POST", "/v2/ep/run", json={"input": {"prompt": "no media"}})
    local_file = gateway.call("POST", "/v2/ep/run", json={"input": {**OLD_BODY["input"], "images": {
        "reference_image": "/etc/hostname"}}})
    # Then each gets its status and v2 code
    assert (big.status_code, error_of(big)["code"]) == (413, "payload_too_large")
    assert (not_json.status_code, error_of(not_json)["code"]) == (400, "invalid_request")
    assert (ui.status_code, error_of(ui)["code"]) == (422, "workflow_format_ui")
    assert (graph.status_code, error_of(graph)["code"]) == (422, "invalid_workflow")
    assert error_of(graph)["details"] == {"dance_code": "workflow.invalid", "node_id": "1"}
    assert (extra.status_code, error_of(extra)["details"]["fields"]) == (422, ["extra_data"])
    assert (old_extra.status_code, error_of(old_extra)["details"]["fields"]) == (422, ["webhook"])
    assert error_of(bad_request)["details"]["dance_code"] == "request.missing_field"
    assert error_of(local_file)["details"]["dance_code"] == "request.bad_media_reference"
    # and nothing was queued, indexed or staged into storage
    assert queued_messages(cluster.broker_url) == 0 and gateway_keys(cluster.broker_url) == []
    assert not any((cluster.root / "storage").iterdir())


def test_a_full_queue_answers_429_with_retry_after_and_queues_nothing_more(
    cluster: Cluster, start_gateway: StartGateway
) -> None:
    # Given a queue capped at one waiting job, and no worker
    gateway = start_gateway(DANCE_GATEWAY_MAX_QUEUE_DEPTH="1", DANCE_GATEWAY_RETRY_AFTER_S="7")
    first = gateway.call("POST", "/v2/ep/run", json=OLD_BODY)
    # When a second job arrives
    second = gateway.call("POST", "/v2/ep/run", json=OLD_BODY)
    # Then it is refused with 429 queue_full and Retry-After, and only the first is queued
    assert first.status_code == 200 and first.json()["status"] == "IN_QUEUE"
    assert second.status_code == 429 and second.headers["Retry-After"] == "7"
    assert error_of(second)["code"] == "queue_full" and error_of(second)["details"]["depth"] == 1
    assert queued_messages(cluster.broker_url) == 1
    assert len(gateway.call("GET", "/api/v2/jobs").json()["jobs"]) == 1


def test_a_job_of_another_key_is_not_found_and_stays_untouched(cluster: Cluster, start_gateway: StartGateway) -> None:
    # Given a job alice submitted
    gateway = start_gateway()
    job_id = gateway.call("POST", "/v2/ep/run", json=OLD_BODY).json()["id"]
    # When bob reads, cancels or streams it, under either API
    answers = [gateway.call("GET", f"/v2/ep/status/{job_id}", key=BOB_KEY),
               gateway.call("POST", f"/v2/ep/cancel/{job_id}", key=BOB_KEY),
               gateway.call("GET", f"/api/v2/jobs/{job_id}", key=BOB_KEY),
               gateway.call("POST", f"/api/v2/jobs/{job_id}/cancel", key=BOB_KEY),
               gateway.call("GET", f"/api/v2/jobs/{job_id}/events", key=BOB_KEY)]
    # Then each is a 404 exactly like an id never submitted, and the job is still queued for alice
    never = gateway.call("GET", "/api/v2/jobs/no-such-job", key=BOB_KEY)
    assert [a.status_code for a in answers] == [404] * 5 and never.status_code == 404
    assert all(error_of(a)["code"] == "not_found" for a in answers)
    assert gateway.call("GET", f"/api/v2/jobs/{job_id}").json()["status"] == "queued"
    assert gateway.call("GET", "/api/v2/jobs", key=BOB_KEY).json()["jobs"] == []


def test_without_keys_the_gateway_refuses_a_non_loopback_address_with_exit_2(cluster: Cluster) -> None:
    # Given no API key configured
    env = {"CELERY_BROKER_URL": cluster.broker_url, "DANCE_GATEWAY_HOST": "0.0.0.0", "PATH": "/usr/bin:/bin"}
    # When the gateway is asked to listen on every address
    done = subprocess.run(gateway_argv(), env=env, capture_output=True, text=True, timeout=60, check=False)
    # Then it exits 2 with the coded error and never listened
    assert done.returncode == 2, done.stderr
    assert "gateway.bind_refused" in done.stderr

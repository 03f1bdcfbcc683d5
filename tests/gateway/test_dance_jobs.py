"""Dance jobs through the gateway: the old endpoint's flow and the v2 routes, on real workers and simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from comfy_low.models import Job as LowJob

from tests.fixtures.workers import Cluster
from tests.gateway.conftest import BOB_KEY, StartGateway
from tests.support.jobs import dance_request
from tests.support.processes import wait_until


def test_the_old_run_then_status_flow_completes_with_the_result_under_output(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path, start_gateway: StartGateway
) -> None:
    # Given a worker on the simulator and a gateway
    sim = comfysim(exec_s=0.05)
    cluster.start_worker("w", sim.url)
    gateway = start_gateway()
    request = dance_request(media_server, tmp_path, steps=2)
    body = {"input": {"images": {"reference_image": request.pop("reference_image")},
                      "videos": {"dance_video": request.pop("dance_video")}, **request}}
    # When the old body is POSTed to /run and its status polled as the deployment guide does
    queued = gateway.call("POST", "/v2/my-endpoint/run", json=body)
    assert queued.status_code == 200 and queued.json()["status"] == "IN_QUEUE", queued.text
    job_id = queued.json()["id"]

    def completed() -> dict[str, Any] | None:
        status: dict[str, Any] = gateway.call("GET", f"/v2/my-endpoint/status/{job_id}").json()
        assert status["status"] in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED"), status
        return status if status["status"] == "COMPLETED" else None

    done = cast(dict[str, Any], wait_until(completed, 60, "the job to be COMPLETED"))
    # Then the result sits under output, exactly the producer's result, with RunPod's timing fields
    output = done["output"]
    assert output["job_id"] == job_id and output["status"] == "succeeded" and output["seed"] == 1234
    assert any(item["kind"] == "video" for item in output["outputs"])
    assert isinstance(done["delayTime"], int) and isinstance(done["executionTime"], int)
    with cluster.client() as client:
        assert client.job(job_id).result(timeout_s=5) == output
    # and the same job is a succeeded v2 job of that key, listed under its status, and of nobody else
    v2 = gateway.call("GET", f"/api/v2/jobs/{job_id}").json()
    assert v2["status"] == "succeeded" and v2["kind"] == "dance" and v2["outputs"][0]["job_id"] == job_id
    assert LowJob.model_validate(v2).status.value == "succeeded"  # the contract's Job, as the SDK reads it
    assert [j["id"] for j in gateway.call("GET", "/api/v2/jobs?status=succeeded").json()["jobs"]] == [job_id]
    assert gateway.call("GET", "/api/v2/jobs?status=queued,running").json()["jobs"] == []
    assert gateway.call("GET", "/api/v2/jobs", key=BOB_KEY).json()["jobs"] == []
    assert sim.state()["prompts_received"] == 1


def test_runsync_answers_the_result_or_after_its_bounded_wait_the_state(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path, start_gateway: StartGateway
) -> None:
    # Given a gateway whose /runsync waits at most 3 s, and no worker yet
    gateway = start_gateway(DANCE_GATEWAY_RUNSYNC_WAIT_S="3")
    body = {"input": dance_request(media_server, tmp_path, steps=2)}
    # When a job is sent to /runsync with no worker to run it
    waited = gateway.call("POST", "/v2/ep/runsync", json=body)
    # Then the answer comes after the bounded wait, with the job still queued
    assert waited.status_code == 200 and waited.json()["status"] == "IN_QUEUE", waited.text
    # and once a worker runs, a /runsync answers the finished job with its output
    sim = comfysim(exec_s=0.05)
    cluster.start_worker("w", sim.url)
    wait_until(lambda: gateway.call("GET", f"/v2/ep/status/{waited.json()['id']}").json()["status"] == "COMPLETED",
               60, "the first job to complete")
    gateway_long = start_gateway(DANCE_GATEWAY_RUNSYNC_WAIT_S="60")
    finished = gateway_long.call("POST", "/v2/ep/runsync", json=body).json()
    assert finished["status"] == "COMPLETED" and finished["output"]["job_id"] == finished["id"]
    assert sim.state()["prompts_received"] == 2


def test_a_queued_job_cancelled_through_the_old_api_never_runs(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path, start_gateway: StartGateway
) -> None:
    # Given a job queued while no worker runs
    gateway = start_gateway()
    job_id = gateway.call("POST", "/v2/ep/run", json={"input": dance_request(media_server, tmp_path)}).json()["id"]
    # When it is cancelled, Then it is CANCELLED at once (canceled in v2)
    assert gateway.call("POST", f"/v2/ep/cancel/{job_id}").json() == {"id": job_id, "status": "CANCELLED"}
    assert gateway.call("GET", f"/api/v2/jobs/{job_id}").json()["status"] == "canceled"
    # and a worker started afterwards runs the next job only
    sim = comfysim(exec_s=0.05)
    cluster.start_worker("w", sim.url)
    later = gateway.call("POST", "/v2/ep/run", json={"input": dance_request(media_server, tmp_path)}).json()["id"]
    wait_until(lambda: gateway.call("GET", f"/v2/ep/status/{later}").json()["status"] == "COMPLETED", 60,
               "the later job to complete")
    assert sim.state()["prompts_received"] == 1
    assert gateway.call("GET", f"/v2/ep/status/{job_id}").json()["status"] == "CANCELLED"


def test_the_endpoint_health_counts_the_queue_and_its_ready_workers(
    cluster: Cluster, comfysim: Any, start_gateway: StartGateway
) -> None:
    # Given one ready worker of queue "dance"
    sim = comfysim(exec_s=0.05)
    cluster.start_worker("w", sim.url)
    gateway = start_gateway()

    def idle_worker() -> dict[str, Any] | None:
        health: dict[str, Any] = gateway.call("GET", "/v2/ep/health", key=None).json()
        return health if health["workers"]["idle"] == 1 else None

    # When the endpoint's health is asked without a key, Then it shows the idle worker and an empty queue
    health = cast(dict[str, Any], wait_until(idle_worker, 60, "the worker to be idle and ready"))
    assert health == {"jobs": {"inQueue": 0, "inProgress": 0},
                      "workers": {"idle": 1, "running": 0, "initializing": 0}, "queue": "dance"}


def test_the_job_list_pages_newest_first_and_refuses_a_bad_filter(
    cluster: Cluster, media_server: Any, tmp_path: Path, start_gateway: StartGateway
) -> None:
    # Given three queued jobs of one key
    gateway = start_gateway()
    body = {"input": dance_request(media_server, tmp_path)}
    ids = [gateway.call("POST", "/v2/ep/run", json=body).json()["id"] for _ in range(3)]
    # When the list is read two at a time
    first = gateway.call("GET", "/api/v2/jobs?limit=2").json()
    second = gateway.call("GET", f"/api/v2/jobs?limit=2&cursor={first['next_cursor']}").json()
    # Then the pages hold the jobs newest first, once each, and the last page has no cursor
    assert [j["id"] for j in first["jobs"] + second["jobs"]] == ids[::-1]
    assert "next_cursor" not in second and all(j["status"] == "queued" for j in first["jobs"])
    assert {"create_time", "update_time", "urls"} <= set(first["jobs"][0])
    # and a filter by an unknown status, or a limit out of range, is a 400
    for query in ("status=done", "limit=0", "limit=101", "limit=x"):
        answer = gateway.call("GET", f"/api/v2/jobs?{query}")
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_request", query

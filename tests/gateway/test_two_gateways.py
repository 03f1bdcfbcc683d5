"""Two real ``dance gateway`` processes behind one Redis serve the same jobs, and losing one loses nothing."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import redis
import requests

from producer import capabilities
from tests.fixtures.workers import Cluster
from tests.gateway.conftest import Gateway, StartGateway
from tests.gateway.test_v2_submit import alice_image, invert_workflow
from tests.support.processes import wait_until

Event = tuple[str, dict[str, Any]]


def held_cluster(cluster: Cluster, comfysim: Any, start_gateway: StartGateway) -> tuple[Any, Gateway, Gateway]:
    """A ready worker whose GPU holds ImageInvert until released, so a job outlasts what the test does
    to the gateways, and two gateways on that one Redis."""
    sim = comfysim()
    sim.faults({"hold": True, "hold_class": "ImageInvert"})
    cluster.start_worker("w", sim.url, COMFYUI_INPUT_DIR=str(sim.data_dir / "input"),
                         COMFYUI_OUTPUT_DIR=str(sim.data_dir / "output"))
    broker = redis.Redis.from_url(cluster.broker_url)
    wait_until(lambda: not capabilities.missing_for(broker, "dance", {}).no_workers, 60,
               "the worker to publish its capabilities")
    return sim, start_gateway(), start_gateway()


def gpu_runs(sim: Any, job_id: str) -> int:
    """Prompts of the job the simulator's executor ran, however they ended."""
    return sum(1 for run in sim.state()["runs"] if run[3] == job_id)


def status_of(gateway: Gateway, job_id: str) -> str:
    return str(gateway.call("GET", f"/api/v2/jobs/{job_id}").json()["status"])


def until_running(events: Iterator[Event]) -> list[Event]:
    """Events up to the first that shows the job running (its status, or a progress of the run)."""
    seen: list[Event] = []
    for event in events:
        seen.append(event)
        if event[0] == "progress" or event == ("status", {"status": "running", "queue_position": None}):
            return seen
    raise AssertionError(f"the stream ended before the job ran: {seen}")


def rest_of(events: Iterator[Event]) -> tuple[list[Event], BaseException | None]:
    """The events left on a stream, and the error that cut it (None: the server ended it)."""
    seen: list[Event] = []
    try:
        for event in events:
            seen.append(event)
    except requests.RequestException as exc:
        return seen, exc
    return seen, None


def test_a_job_submitted_through_one_gateway_is_read_listed_and_cancelled_through_the_other(
    cluster: Cluster, comfysim: Any, tmp_path: Path, start_gateway: StartGateway
) -> None:
    # Given two gateways on one Redis, and a workflow job submitted through the first that the GPU holds
    sim, first, second = held_cluster(cluster, comfysim, start_gateway)
    image = alice_image(cluster, tmp_path)
    job = first.call("POST", "/api/v2/jobs", json={"workflow": invert_workflow(image.id)},
                     headers={"Idempotency-Key": "two-gateways-1"}).json()
    wait_until(lambda: sim.state()["held"], 30, "the prompt to be held")
    # When the second gateway reads it, lists it, is sent the same Idempotency-Key, and cancels it
    read = second.call("GET", f"/api/v2/jobs/{job['id']}").json()
    listed = second.call("GET", "/api/v2/jobs?status=running").json()["jobs"]
    reused = second.call("POST", "/api/v2/jobs", json={"workflow": invert_workflow(image.id)},
                         headers={"Idempotency-Key": "two-gateways-1"})
    cancelled = second.call("POST", f"/api/v2/jobs/{job['id']}/cancel").json()
    # Then it is the same job, running, its links on the gateway that answered; the key's reuse is refused
    assert (read["id"], read["status"], read["kind"]) == (job["id"], "running", "workflow")
    assert read["urls"]["self"] == f"{second.url}/api/v2/jobs/{job['id']}"
    assert [item["id"] for item in listed] == [job["id"]]
    assert reused.status_code == 422 and reused.json()["error"]["details"]["job_id"] == job["id"]
    assert cancelled["status"] in ("canceling", "canceled")
    # and the first gateway sees it end canceled, its one prompt interrupted
    wait_until(lambda: status_of(first, job["id"]) == "canceled", 60, "the first gateway to read canceled")
    wait_until(lambda: sim.state()["running"] is None, 30, "the prompt to stop")
    assert sim.state()["interrupts"] == 1 and gpu_runs(sim, job["id"]) == 1


def test_a_gateway_killed_mid_stream_loses_nothing_the_client_follows_the_job_to_its_end_on_the_other(
    cluster: Cluster, comfysim: Any, tmp_path: Path, start_gateway: StartGateway
) -> None:
    # Given two gateways on one Redis, a job submitted through the first whose GPU step outlasts what
    # follows, and a client streaming its events from that first gateway while it runs
    sim, first, second = held_cluster(cluster, comfysim, start_gateway)
    image = alice_image(cluster, tmp_path)
    job_id = first.call("POST", "/api/v2/jobs", json={"workflow": invert_workflow(image.id)}).json()["id"]
    stream = first.events(job_id)
    before = until_running(stream)
    wait_until(lambda: sim.state()["held"], 30, "the prompt to be held")
    # When the first gateway is killed with SIGKILL in the middle of that stream
    first.process.kill()
    cut, _ = rest_of(stream)
    # Then the client's stream is cut without the job's end, while the job goes on running
    assert first.process.poll() == -signal.SIGKILL
    assert all(event[1].get("status") not in ("succeeded", "failed", "canceled") for event in before + cut)
    # When the client reconnects to the second gateway, and the GPU step ends
    again = second.events(job_id)
    resumed = until_running(again)
    sim.release()
    tail, error = rest_of(again)
    # Then the new stream opens on the running job, and follows it to its output and success
    assert resumed[0] == ("status", {"status": "running", "queue_position": None})
    assert error is None and tail[-1] == ("status", {"status": "succeeded", "queue_position": None})
    [output] = [data for name, data in tail if name == "output"]
    # and a poll of the second gateway gives the same outcome, from exactly one GPU run of the job
    done = cast(dict[str, Any], second.call("GET", f"/api/v2/jobs/{job_id}").json())
    assert done["status"] == "succeeded" and [o["id"] for o in done["outputs"]] == [output["id"]]
    assert gpu_runs(sim, job_id) == 1 and sim.state()["prompts_received"] == 1

"""What ComfyUI can do to a job: reject it, fail it, outlive its deadline, drop its socket, be cancelled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from producer import errors, keys
from tests.fixtures.workers import Cluster
from tests.support.jobs import dance_request, job_counter
from tests.support.processes import wait_until
from worker.settings import DEFAULT_WORKFLOW_PATH


def workflow_variant(tmp_path: Path, **changes: Any) -> Path:
    """The shipped workflow with nodes replaced or added (``changes`` maps node id to node)."""
    graph = json.loads(DEFAULT_WORKFLOW_PATH.read_text())
    graph.update(changes)
    path = tmp_path / "variant.json"
    path.write_text(json.dumps(graph))
    return path


def failed_job(cluster: Cluster, request: dict[str, Any], **submit: Any) -> errors.DanceError:
    with cluster.client() as client, pytest.raises(errors.DanceError) as raised:
        client.submit(request, **submit).result(timeout_s=60)
    return raised.value


def test_a_prompt_comfyui_answers_400_fails_the_job_with_its_per_node_details(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a workflow whose scheduler is a value ComfyUI does not offer
    graph = json.loads(DEFAULT_WORKFLOW_PATH.read_text())
    graph["349"]["inputs"]["scheduler"] = "no-such-scheduler"
    sim = comfysim(exec_s=0.1)
    cluster.start_worker("w", sim.url, DANCE_WORKFLOW=str(workflow_variant(tmp_path, **{"349": graph["349"]})))
    # When a job runs, it fails permanently with ComfyUI's own explanation, per node
    error = failed_job(cluster, dance_request(media_server, tmp_path))
    assert error.code == errors.COMFY_PROMPT_REJECTED and not error.retryable
    assert error.details["type"] == "prompt_outputs_failed_validation"
    assert error.details["nodes"]["349"]["errors"][0]["type"] == "value_not_in_list"
    assert "349" in error.message


@pytest.mark.parametrize("version", ["0.3.39", "0.12.3"])
def test_a_200_with_node_errors_fails_the_job_and_the_accepted_part_does_not_run(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path, version: str
) -> None:
    # Given a workflow with a second output whose input is missing: ComfyUI accepts the rest with 200
    broken = {"900": {"class_type": "ImageInvert", "inputs": {}},
              "901": {"class_type": "SaveImage", "inputs": {"images": ["900", 0], "filename_prefix": "x"}}}
    sim = comfysim(exec_s=5.0, version=version)
    cluster.start_worker("w", sim.url, DANCE_WORKFLOW=str(workflow_variant(tmp_path, **broken)))
    # When a job runs, it fails with the node errors, not as a success
    error = failed_job(cluster, dance_request(media_server, tmp_path))
    assert error.code == errors.COMFY_NODE_ERRORS
    assert error.details["nodes"]["900"]["errors"][0]["type"] == "required_input_missing"
    # and the part ComfyUI accepted was dropped or interrupted rather than left to burn GPU time: by the
    # time the job failed nothing of it waits or runs, and it never ran to the end
    queue = sim.request("GET", "/queue")
    assert queue == {"queue_running": [], "queue_pending": []}
    history = sim.request("GET", "/history")
    assert all(entry["status"]["status_str"] == "error" for entry in history.values())


def test_an_execution_error_fails_the_job_with_the_node_and_exception(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    sim = comfysim(exec_s=0.2)
    sim.faults({"fail_class": "WanVideoSamplerv2", "exception_type": "torch.OutOfMemoryError",
                "exception_message": "CUDA out of memory. Tried to allocate 2.00 GiB"})
    cluster.start_worker("w", sim.url)
    error = failed_job(cluster, dance_request(media_server, tmp_path))
    assert error.code == errors.COMFY_EXECUTION_ERROR
    assert error.details["node_id"] == "348" and error.details["node_type"] == "WanVideoSamplerv2"
    assert error.details["exception_type"] == "torch.OutOfMemoryError"
    assert "out of memory" in error.message


def test_a_job_past_its_deadline_interrupts_its_own_prompt_and_fails(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a ComfyUI whose sampler holds until released
    sim = comfysim(exec_s=0.2)
    sim.faults({"hold": True})
    cluster.start_worker("w", sim.url)
    # When a job with a 2 s execution deadline runs
    error = failed_job(cluster, dance_request(media_server, tmp_path), timeout_s=2.0)
    # Then it fails with the deadline code after interrupting its prompt
    assert error.code == errors.JOB_DEADLINE
    wait_until(lambda: sim.state()["interrupts"] >= 1, 10, "the simulator to see the interrupt")
    wait_until(lambda: sim.state()["running"] is None, 10, "the interrupted prompt to end")


def test_a_websocket_dropped_mid_job_is_recovered_through_history(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a ComfyUI that closes every socket at the first progress message, and keeps running
    sim = comfysim(exec_s=1.0)
    sim.faults({"drop_websockets_at": "progress"})
    worker = cluster.start_worker("w", sim.url)
    # When a job runs, it still succeeds
    with cluster.client() as client:
        result = client.submit(dance_request(media_server, tmp_path)).result(timeout_s=60)
    assert result["status"] == "succeeded" and result["outputs"]
    assert "WebSocket dropped" in worker.log()


def test_cancelling_a_running_job_interrupts_only_its_prompt_and_ends_revoked(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    sim = comfysim(exec_s=0.2)
    sim.faults({"hold": True})
    cluster.start_worker("w", sim.url)
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path))
        wait_until(lambda: sim.state()["running"] is not None, 30, "the prompt to start")
        # When the running job is cancelled
        handle.cancel()
        # Then it ends REVOKED, its prompt interrupted
        wait_until(lambda: handle.status() == "REVOKED", 20, "the job to end REVOKED")
        with pytest.raises(errors.DanceError) as raised:
            handle.result(timeout_s=5)
        assert raised.value.code == errors.JOB_CANCELLED
        wait_until(lambda: sim.state()["interrupts"] == 1, 10, "the interrupt")
        # and the worker takes the next job normally
        sim.faults({"hold": False})
        sim.release()
        assert client.submit(dance_request(media_server, tmp_path)).result(timeout_s=60)["status"] == "succeeded"


def test_cancelling_a_queued_job_means_it_never_runs(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a job queued while no worker runs
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path))
        # When it is cancelled, it is REVOKED at once
        assert handle.cancel() == "REVOKED"
        # and a worker started afterwards never sends it to ComfyUI
        sim = comfysim(exec_s=0.1)
        cluster.start_worker("w", sim.url)
        later = client.submit(dance_request(media_server, tmp_path))
        assert later.result(timeout_s=60)["status"] == "succeeded"
    assert sim.state()["prompts_received"] == 1
    assert handle.status() == "REVOKED"


def test_a_prompt_interrupted_by_someone_else_is_run_again(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a job whose prompt runs (held mid-sampler)
    sim = comfysim(exec_s=0.2)
    sim.faults({"hold": True})
    cluster.start_worker("w", sim.url)
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path), job_id="interrupted-elsewhere")
        wait_until(lambda: sim.state()["held"], 30, "the prompt to run")
        # When an operator interrupts it in ComfyUI directly
        sim.faults({"hold": False})
        requests.post(f"{sim.url}/interrupt", timeout=5)
        # Then the job is not failed: it goes back to the queue and runs again to success
        assert handle.result(timeout_s=60)["status"] == "succeeded"
    assert job_counter(cluster.broker_url, keys.attempts("interrupted-elsewhere")) == 2

"""The readiness gate, with real workers, a real Redis and the ComfyUI simulator over real HTTP."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.workers import Cluster
from tests.support.jobs import dance_request, queued_messages, unacked_messages
from tests.support.processes import free_port, wait_until

READY_LINE = re.compile(r"\S+@\S+ ready\.")


def pings(cluster: Cluster, node: str) -> bool:
    with cluster.client() as client:
        replies = client.app.control.ping(destination=[node], timeout=1.0)
    return any(node in reply for reply in replies)


def node_name(name: str) -> str:
    import socket

    return f"{name}@{socket.gethostname()}"


def test_a_message_queued_while_the_gate_waits_stays_in_redis_and_a_ready_worker_takes_it(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given worker B whose ComfyUI does not listen at all
    dead_comfyui = f"http://127.0.0.1:{free_port()}"
    waiting = cluster.start_worker("b", dead_comfyui, COMFYUI_READY_LOG_INTERVAL_S="0.5")
    waiting.wait_for_log("detached until ComfyUI is ready")
    # and a job queued while B waits
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path))
        # When B has probed and reported several times, and still answers ping
        waiting.wait_for_log("still missing: ComfyUI at")
        wait_until(lambda: pings(cluster, node_name("b")), 30, "the gated worker to answer ping")
        # Then the message is still in Redis, reserved by nobody
        assert queued_messages(cluster.broker_url) == 1
        assert unacked_messages(cluster.broker_url) == 0
        # When a second worker with a ready ComfyUI starts
        sim = comfysim(exec_s=0.2)
        cluster.start_worker("a", sim.url)
        # Then it takes the job and completes it while B still waits
        result = handle.result(timeout_s=60)
    assert result["worker"]["hostname"] == node_name("a")
    assert waiting.poll() is None
    # and B never claimed to be ready: no worker_ready, no "ready." line
    assert not READY_LINE.search(waiting.log())


def test_a_job_enqueued_before_comfyui_listens_succeeds_once_comfyui_is_up_10s_later(
    cluster: Cluster, comfysim_unstarted: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a ComfyUI that refuses connections for its first 10 s (the original cold-start race)
    sim = comfysim_unstarted(start_delay_s=10.0, exec_s=0.2)
    worker = cluster.start_worker("w", sim.url)
    with cluster.client() as client:
        # When a job is enqueued at once
        handle = client.submit(dance_request(media_server, tmp_path))
        # Then the worker holds it back until ComfyUI answers, and the job succeeds
        result = handle.result(timeout_s=90)
    assert result["status"] == "succeeded"
    match = re.search(r"ComfyUI ready after ([\d.]+)s", worker.log())
    assert match is not None and float(match.group(1)) >= 5.0
    assert "connection refused" not in str(result).lower()


def test_a_worker_whose_comfyui_never_gets_ready_exits_non_zero_and_reserves_nothing(
    cluster: Cluster, media_server: Any, tmp_path: Path
) -> None:
    # Given a job waiting in the queue
    with cluster.client() as client:
        client.submit(dance_request(media_server, tmp_path))
    # When a worker starts whose ComfyUI never answers, with a short readiness timeout
    worker = cluster.start_worker("w", f"http://127.0.0.1:{free_port()}", COMFYUI_READY_TIMEOUT_S="3")
    # Then it exits non-zero
    assert worker.wait(timeout_s=60) != 0
    assert "was not ready within COMFYUI_READY_TIMEOUT_S" in worker.log()
    # and the job is still queued, reserved by nobody
    assert queued_messages(cluster.broker_url) == 1
    assert unacked_messages(cluster.broker_url) == 0


@pytest.mark.parametrize(
    ("sim_options", "worker_env", "missing", "code"),
    [
        ({"missing_node": ["WanVideoSamplerv2"]}, {}, "node classes WanVideoSamplerv2", "workflow.unknown_nodes"),
        ({"missing_model": ["clip_vision_h.safetensors"]}, {}, "model files clip_vision_h.safetensors",
         "workflow.missing_models"),
        ({"device": "cpu"}, {"COMFYUI_REQUIRE_GPU": "1"}, "a CUDA device", "comfyui.no_gpu"),
    ],
    ids=["missing-node", "missing-model", "no-gpu"],
)
def test_the_gate_waits_and_says_what_is_missing_until_timeout(
    cluster: Cluster, comfysim: Any, sim_options: dict[str, Any], worker_env: dict[str, str], missing: str,
    code: str,
) -> None:
    # Given a ComfyUI that answers but lacks something the workflow needs
    sim = comfysim(**sim_options)
    # When a worker starts
    worker = cluster.start_worker(
        "w", sim.url, COMFYUI_READY_TIMEOUT_S="4", COMFYUI_READY_LOG_INTERVAL_S="1", **worker_env
    )
    # Then it reports what is missing and finally exits non-zero without ever being ready
    assert worker.wait(timeout_s=60) != 0
    assert missing in worker.log()
    assert f"[{code}] ComfyUI was not ready within" in worker.log()
    assert not READY_LINE.search(worker.log())


def test_the_gate_holds_when_the_worker_is_started_with_the_dance_cli_too(
    cluster: Cluster, comfysim_unstarted: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a worker started with `dance worker` and a ComfyUI that comes up 3 s later
    sim = comfysim_unstarted(start_delay_s=3.0, exec_s=0.2)
    worker = cluster.start_worker("cli", sim.url, via="dance")
    worker.wait_for_log("detached until ComfyUI is ready")
    # Then it answers ping but is not ready, and its liveness check says so
    wait_until(lambda: pings(cluster, node_name("cli")), 30, "the gated worker to answer ping")
    assert not READY_LINE.search(worker.log().split("ComfyUI ready after")[0])
    # When ComfyUI comes up, the worker becomes ready and runs a job
    with cluster.client() as client:
        result = client.submit(dance_request(media_server, tmp_path)).result(timeout_s=60)
    assert result["status"] == "succeeded"
    worker.wait_for_log(" ready.")


def test_a_gated_worker_stops_promptly_on_sigterm(cluster: Cluster) -> None:
    # Given a worker waiting for a ComfyUI that never comes
    worker = cluster.start_worker("w", f"http://127.0.0.1:{free_port()}")
    worker.wait_for_log("detached until ComfyUI is ready")
    wait_until(lambda: pings(cluster, node_name("w")), 30, "the gated worker to answer ping")
    # When it is asked to stop
    import signal

    worker.signal(signal.SIGTERM)
    # Then it exits cleanly well before its readiness timeout
    assert worker.wait(timeout_s=20) == 0

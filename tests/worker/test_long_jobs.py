"""Jobs that hold the GPU for a long time: their deadline, a slow ComfyUI and a prompt cleared from its queue."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from producer import errors, keys
from tests.fixtures.workers import Cluster
from tests.support.jobs import dance_request, job_counter, one_running_one_staged
from tests.support.processes import wait_until
from worker.comfy_http import ComfyHttp


def runs_of(sim: Any, job_id: str) -> list[tuple[float, float]]:
    """(start, end) of every GPU run of ``job_id``, from the simulator's own records."""
    return [(start, end) for _, start, end, job, _ in sim.state()["runs"] if job == job_id]


def test_a_pipelined_job_keeps_its_whole_deadline_for_its_own_execution(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given one pipelining worker whose ComfyUI spends 6 s on each prompt
    sim = comfysim(exec_s=6.0)
    cluster.start_worker("w", sim.url)
    with cluster.client() as client:
        # When two jobs with an 8 s deadline are submitted together, so the second's prompt waits behind
        # the first in ComfyUI's queue
        first = client.submit(dance_request(media_server, tmp_path), job_id="long-1", timeout_s=8.0)
        second = client.submit(dance_request(media_server, tmp_path), job_id="long-2", timeout_s=8.0)
        wait_until(lambda: one_running_one_staged(sim), 30, "the second prompt staged behind the first")
        second_queued_by = time.time()
        # Then both succeed
        assert first.result(timeout_s=60)["status"] == "succeeded"
        assert second.result(timeout_s=60)["status"] == "succeeded"
    # although the second's prompt spent more than its deadline between POST /prompt and its end
    [(_, first_end)] = runs_of(sim, "long-1")
    [(second_start, second_end)] = runs_of(sim, "long-2")
    assert second_start >= first_end
    assert second_end - second_queued_by > 8.0


def test_a_job_whose_own_execution_outlasts_its_deadline_still_fails(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a ComfyUI that spends 8 s on the prompt
    sim = comfysim(exec_s=8.0)
    cluster.start_worker("w", sim.url)
    # When a job with a 3 s deadline runs
    with cluster.client() as client, pytest.raises(errors.DanceError) as raised:
        client.submit(dance_request(media_server, tmp_path), job_id="late", timeout_s=3.0).result(timeout_s=60)
    # Then it fails with the deadline code, and its GPU run was cut short rather than run to its end
    assert raised.value.code == errors.JOB_DEADLINE
    wait_until(lambda: len(runs_of(sim, "late")) == 1, 15, "the interrupted run to end")
    [(start, end)] = runs_of(sim, "late")
    assert end - start < 8.0


def test_a_prompt_cleared_from_comfyuis_queue_is_noticed_and_its_job_runs_again(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a worker whose first job is held mid-sampler and whose second job's prompt waits behind it
    sim = comfysim(exec_s=0.5)
    sim.faults({"hold": True})
    worker = cluster.start_worker("w", sim.url)
    with cluster.client() as client:
        held = client.submit(dance_request(media_server, tmp_path), job_id="held")
        staged = client.submit(dance_request(media_server, tmp_path), job_id="staged")
        wait_until(lambda: one_running_one_staged(sim), 30, "the staged prompt behind the held one")
        # When someone clears ComfyUI's queue ("clear queue" in its UI, 17_queue_clear)
        sim.request("POST", "/queue", {"clear": True})
        # Then within seconds the staged job is handed back and started again, while the held one still runs
        wait_until(lambda: job_counter(cluster.broker_url, keys.attempts("staged")) == 2, 10,
                   "the staged job to be handed back and started again")
        assert sim.state()["held"]
        assert errors.COMFY_PROMPT_LOST in worker.log()
        # and once the held job ends, the staged one succeeds
        sim.release()
        assert held.result(timeout_s=60)["status"] == "succeeded"
        assert staged.result(timeout_s=60)["status"] == "succeeded"
    assert len(runs_of(sim, "staged")) == 1


def test_a_comfyui_too_slow_to_answer_has_the_prompt_stopped_before_the_job_runs_again(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a worker with a 1 s ComfyUI HTTP timeout, running a 10 s prompt
    sim = comfysim(exec_s=10.0)
    worker = cluster.start_worker("w", sim.url, COMFYUI_HTTP_TIMEOUT_S="1")
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path), job_id="slow")
        wait_until(lambda: sim.state()["running"] is not None, 30, "the prompt to start")
        # When ComfyUI's next answer to GET /history (the job's safety poll) comes 3 s late
        sim.faults({"slow_route": "/history", "slow_s": 3.0})
        # Then the job is handed back with the timeout code and succeeds on its second attempt
        assert handle.result(timeout_s=60)["status"] == "succeeded"
    assert errors.COMFY_TIMEOUT in worker.log()
    assert job_counter(cluster.broker_url, keys.attempts("slow")) == 2
    # and its first GPU run was interrupted before the second began: never two runs of the job at once
    (first_start, first_end), (second_start, _) = sorted(runs_of(sim, "slow"))
    assert first_end - first_start < 10.0 and first_end <= second_start


def test_a_timeout_and_a_refused_connection_have_their_own_codes(comfysim: Any) -> None:
    # Given a ComfyUI whose next /system_stats answer comes 2 s late, and a port nothing listens on
    sim = comfysim(exec_s=0.1)
    sim.faults({"slow_route": "/system_stats", "slow_s": 2.0})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    # When each is asked with a 0.5 s timeout
    with pytest.raises(errors.DanceError) as slow:
        ComfyHttp(sim.url, timeout_s=0.5).system_stats()
    with pytest.raises(errors.DanceError) as refused:
        ComfyHttp(f"http://127.0.0.1:{closed_port}", timeout_s=0.5).system_stats()
    # Then the slow one is a timeout, the closed one unreachable; both retryable
    assert slow.value.code == errors.COMFY_TIMEOUT and slow.value.retryable
    assert refused.value.code == errors.COMFY_UNREACHABLE and refused.value.retryable


def test_a_prompt_that_waits_in_comfyuis_queue_past_its_bound_sends_its_job_back(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a worker whose prompts may wait 3 s in ComfyUI's queue, and a first job held mid-sampler
    sim = comfysim(exec_s=0.5)
    sim.faults({"hold": True})
    worker = cluster.start_worker("w", sim.url, COMFYUI_QUEUE_WAIT_S="3")
    with cluster.client() as client:
        held = client.submit(dance_request(media_server, tmp_path), job_id="ahead")
        behind = client.submit(dance_request(media_server, tmp_path), job_id="behind")
        # When the second job's prompt waits behind the held one for longer than that
        wait_until(lambda: job_counter(cluster.broker_url, keys.attempts("behind")) == 2, 20,
                   "the waiting job to be handed back and started again")
        # Then it was handed back with the queue-wait code, its prompt dropped rather than left to run
        assert errors.COMFY_QUEUE_WAIT in worker.log()
        assert sim.state()["held"] and runs_of(sim, "behind") == []
        # and once the GPU is free it succeeds
        sim.release()
        assert held.result(timeout_s=60)["status"] == "succeeded"
        assert behind.result(timeout_s=60)["status"] == "succeeded"
    assert len(runs_of(sim, "behind")) == 1

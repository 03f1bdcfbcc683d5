"""The /__sim__ test hooks: hold and release, injected failures, dropped sockets, crashes, state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import requests
import websocket

from tests.fixtures.comfysim import ComfySim, WsRecorder
from tests.simulator.dance_media import bound_workflow, reference_png, write_clip
from tests.simulator.test_dance_catalog import SAMPLER, dance_values, fetch_output, history_of, upload
from tests.support.processes import wait_until

HTTP_TIMEOUT_S = 30.0
#: Exit status of the crash fault (what a SIGKILL'd process reports).
CRASH_EXIT_STATUS = 137
WAIT_S = 20.0
CLIENT = "fault-client"


def submit(sim: ComfySim, tmp_path: Path, client_id: str | None = CLIENT) -> str:
    upload(sim, "ref.png", reference_png(), "image/png")
    upload(sim, "clip.mp4", write_clip(tmp_path / "clip.mp4", 8).read_bytes(), "video/mp4")
    body: dict[str, Any] = {"prompt": bound_workflow(dance_values())}
    if client_id:
        body["client_id"] = client_id
    response = requests.post(f"{sim.url}/prompt", json=body, timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 200, response.text
    prompt_id: str = response.json()["prompt_id"]
    return prompt_id


def test_hold_stops_the_sampler_mid_run_until_released(comfysim: Any, tmp_path: Path) -> None:
    # Given a held sampler
    sim = comfysim(exec_s=0.1)
    sim.faults({"hold": True})
    socket = WsRecorder(sim.ws_url, CLIENT)
    prompt_id = submit(sim, tmp_path)
    # When the run reaches it, it stays there: running, held, and not finished
    wait_until(lambda: sim.state()["held"], WAIT_S, "the sampler to be held")
    assert sim.state()["running"] == prompt_id
    assert history_of_or_none(sim, prompt_id) is None
    # Then a release lets it finish normally
    sim.release()
    socket.wait_done(prompt_id)
    assert history_of(sim, prompt_id)["status"]["status_str"] == "success"
    assert sim.state()["executed"] == [prompt_id]


def test_a_hold_at_a_progress_value_stops_the_sampler_right_after_that_step(comfysim: Any, tmp_path: Path) -> None:
    # Given the sampler held at step 2 of 3
    sim = comfysim(exec_s=0.1)
    sim.faults({"hold": True, "hold_at_progress": "2/3"})
    socket = WsRecorder(sim.ws_url, CLIENT)
    prompt_id = submit(sim, tmp_path)
    # When the run reaches that step, it stays there
    wait_until(lambda: sim.state()["held"], WAIT_S, "the sampler to be held")

    def sampler_steps(frames: list[Any]) -> list[tuple[int, int]]:
        return [(f.json["data"]["value"], f.json["data"]["max"])
                for f in frames if f.type == "progress" and f.json["data"]["node"] == SAMPLER]

    # Then the sampler's progress reaches step 2 of 3 (after the weight-loading ticks and step 1) and stops
    # there: while the node is held, nothing follows that frame
    socket.wait_for(lambda frames: (2, 3) in sampler_steps(frames), WAIT_S, "the sampler's step 2 of 3")
    assert sim.state()["held"] and sampler_steps(socket.frames)[-2:] == [(1, 3), (2, 3)]
    # and a release lets it finish normally
    sim.release()
    socket.wait_done(prompt_id)
    assert history_of(sim, prompt_id)["status"]["status_str"] == "success"


def history_of_or_none(sim: ComfySim, prompt_id: str) -> dict[str, Any] | None:
    body: dict[str, Any] = requests.get(f"{sim.url}/history/{prompt_id}", timeout=HTTP_TIMEOUT_S).json()
    return body.get(prompt_id)


def test_interrupt_ends_a_hold_and_lands_at_the_samplers_next_progress_tick(comfysim: Any, tmp_path: Path) -> None:
    sim = comfysim(exec_s=0.1)
    sim.faults({"hold": True})
    socket = WsRecorder(sim.ws_url, CLIENT)
    prompt_id = submit(sim, tmp_path)
    wait_until(lambda: sim.state()["held"], WAIT_S, "the sampler to be held")
    requests.post(f"{sim.url}/interrupt", timeout=HTTP_TIMEOUT_S)
    frames = socket.wait_done(prompt_id)
    interrupted = [f.json["data"] for f in frames if f.type == "execution_interrupted"]
    assert [(d["node_id"], d["node_type"]) for d in interrupted] == [(SAMPLER, "WanVideoSamplerv2")]
    assert [f.type for f in frames][-3:] == ["execution_interrupted", "status", "executing"]
    assert sim.state()["interrupts"] == 1


def test_injected_failure_is_an_execution_error_of_that_node_once(comfysim: Any, tmp_path: Path) -> None:
    # Given the sampler armed to fail with a CUDA out-of-memory error
    sim = comfysim(exec_s=0.1)
    sim.faults(
        {
            "fail_class": "WanVideoSamplerv2",
            "exception_type": "torch.OutOfMemoryError",
            "exception_message": "CUDA out of memory. Tried to allocate 2.00 GiB",
        }
    )
    socket = WsRecorder(sim.ws_url, CLIENT)
    failed_id = submit(sim, tmp_path)
    frames = socket.wait_done(failed_id)
    # Then the run ends with execution_error in the sampler, with the recorded payload keys
    (error,) = [f.json["data"] for f in frames if f.type == "execution_error"]
    assert (error["node_id"], error["node_type"], error["exception_type"]) == (
        SAMPLER,
        "WanVideoSamplerv2",
        "torch.OutOfMemoryError",
    )
    assert error["exception_message"] == "CUDA out of memory. Tried to allocate 2.00 GiB"
    assert set(error) == {
        "prompt_id",
        "node_id",
        "node_type",
        "executed",
        "exception_message",
        "exception_type",
        "traceback",
        "current_inputs",
        "current_outputs",
        "timestamp",
    }
    assert [f.type for f in frames][-3:] == ["execution_error", "status", "executing"]
    assert history_of(sim, failed_id)["status"]["status_str"] == "error"
    # And the fault was one-shot: the next prompt succeeds
    response = requests.post(
        f"{sim.url}/prompt",
        json={"prompt": bound_workflow(dance_values(seed="8")), "client_id": CLIENT},
        timeout=HTTP_TIMEOUT_S,
    )
    next_id = response.json()["prompt_id"]
    socket.wait_done(next_id)
    assert history_of(sim, next_id)["status"]["status_str"] == "success"


def test_dropped_websockets_close_abruptly_while_the_prompt_keeps_running(comfysim: Any, tmp_path: Path) -> None:
    sim = comfysim(exec_s=0.1)
    sim.faults({"drop_websockets_at": "progress:WanVideoSamplerv2"})
    socket = WsRecorder(sim.ws_url, CLIENT)
    prompt_id = submit(sim, tmp_path)
    # The socket is cut without a close frame, as a network failure would
    assert socket.closed.wait(WAIT_S)
    assert isinstance(socket.close_error, websocket.WebSocketConnectionClosedException)
    # And the prompt still completes; a new connection works
    wait_until(lambda: history_of_or_none(sim, prompt_id), WAIT_S, "the prompt to finish")
    assert history_of(sim, prompt_id)["status"]["status_str"] == "success"
    again = WsRecorder(sim.ws_url, CLIENT)
    again.wait_for(lambda fs: fs and fs[0].json["data"]["sid"] == CLIENT, what="the first status frame")
    again.close()


def test_crash_fault_kills_the_process_like_sigkill(comfysim: Any, tmp_path: Path) -> None:
    sim = comfysim(exec_s=0.1)
    sim.faults({"crash_at": "progress:WanVideoSamplerv2"})
    socket = WsRecorder(sim.ws_url, CLIENT)
    submit(sim, tmp_path)
    assert sim.process.wait(WAIT_S) == CRASH_EXIT_STATUS
    assert socket.closed.wait(WAIT_S)
    assert not sim.answers()


def test_faults_endpoint_rejects_unknown_keys_and_sets_exec_time(comfysim: Any) -> None:
    sim = comfysim(catalog="core")
    response = requests.post(f"{sim.url}/__sim__/faults", json={"explode": True}, timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 400
    assert sim.faults({"exec_s": 0.5})["exec_s"] == 0.5
    state = sim.state()
    assert state == {
        "prompts_received": 0,
        "executed": [],
        "interrupts": 0,
        "uploads": [],
        "running": None,
        "held": False,
        "memory_frees": 0,
        "runs": [],
        "sockets": [],
        "model_loads": [],
    }


def test_the_benchmark_knobs_pace_view_and_pad_outputs(comfysim: Any, tmp_path: Path) -> None:
    # Given a simulator told to pad its videos and to serve /view at 2 MB/s
    sim = comfysim(exec_s=0.05)
    sim.faults({"pad_output_bytes": 1_000_000, "view_bytes_per_s": 2_000_000})
    # When the dance workflow runs
    prompt_id = submit(sim, tmp_path)
    wait_until(lambda: history_of_or_none(sim, prompt_id) is not None, WAIT_S, "the prompt to finish")
    video = history_of(sim, prompt_id)["outputs"]["139"]["gifs"][0]
    # Then its video is padded with a free box that players skip
    path = sim.data_dir / "output" / video["subfolder"] / video["filename"]
    assert path.stat().st_size >= 1_000_000
    with av.open(str(path)) as container:
        assert next(container.decode(video=0)).width > 0
    # and the paced /view still serves every byte (its pace is measured by `make bench`, not here)
    fetched = fetch_output(sim, video, tmp_path / "fetched.mp4")
    assert fetched.read_bytes() == path.read_bytes()
    # and the run is recorded with its start and end
    [(run_id, started, ended, job_id, worker)] = sim.state()["runs"]
    assert run_id == prompt_id and started <= ended
    # with no job or worker mark: this prompt came from no dance worker
    assert job_id is None and worker is None


def test_last_prompt_is_the_body_as_sent_before_validation_coerces_it(comfysim: Any, tmp_path: Path) -> None:
    # Given a prompt whose numbers arrive as strings
    sim = comfysim(exec_s=0.1)
    submit(sim, tmp_path, client_id=None)
    # Then the simulator's log keeps the strings the client sent (validation coerces only the queued copy)
    assert sim.last_prompt()["203"]["inputs"]["value"] == "128"
    assert sim.state()["prompts_received"] == 1

"""Model loading: the first use of each model file after start costs --model-load-s, later uses are free."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests

from simulator.model_loads import model_files
from simulator.settings import settings_from_args
from tests.fixtures.comfysim import ComfySim, Frame, WsRecorder
from tests.simulator.dance_media import bound_workflow
from tests.simulator.test_dance_catalog import SAMPLER, dance_values
from tests.simulator.test_faults import CLIENT, submit

#: Simulated load time per model file in these tests, in seconds: long against everything else a run does.
LOAD_S = 0.5
#: The dance template, whose loader nodes name the model files.
WORKFLOW = Path(__file__).resolve().parents[2] / "worker" / "workflows" / "dance_scail.json"
#: The WanVideoModelLoader node of the template.
MODEL_LOADER = "22"
#: Generous wait for one prompt that pays every model load, in seconds.
COLD_RUN_S = 60.0
HTTP_TIMEOUT_S = 30.0


def workflow_models() -> set[str]:
    graph: dict[str, Any] = json.loads(WORKFLOW.read_text())
    return {name for node in graph.values() for name in model_files(node["inputs"])}


def run_span_s(sim: ComfySim, prompt_id: str) -> float:
    """How long the executor ran the prompt, from its own record."""
    run = next(run for run in sim.state()["runs"] if run[0] == prompt_id)
    return float(run[2]) - float(run[1])


def frames_of_node(frames: list[Frame], node: str) -> list[str]:
    return [f.type for f in frames if f.json is not None and f.json["data"].get("node") == node]


def test_the_first_prompt_after_start_pays_once_for_every_model_file_its_loaders_name(
    comfysim: Any, tmp_path: Path
) -> None:
    # Given a fresh simulator whose model loads take LOAD_S each
    sim = comfysim(exec_s=0.1, model_load_s=LOAD_S)
    socket = WsRecorder(sim.ws_url, CLIENT)
    # When the dance workflow runs for the first time
    prompt_id = submit(sim, tmp_path)
    frames = socket.wait_done(prompt_id, COLD_RUN_S)
    # Then every model file the loaders name was loaded exactly once, and the run took that long at least
    loads = sim.state()["model_loads"]
    assert sorted(loads) == sorted(workflow_models()) and len(loads) == len(set(loads))
    assert run_span_s(sim, prompt_id) >= LOAD_S * len(loads)
    # and, as ComfyUI shows a loader reading weights, the model loader executes without any progress
    assert frames_of_node(frames, MODEL_LOADER) == ["executing"]


def test_a_later_prompt_using_the_same_models_loads_nothing(comfysim: Any, tmp_path: Path) -> None:
    # Given a simulator that already ran the workflow once
    sim = comfysim(exec_s=0.1, model_load_s=LOAD_S)
    socket = WsRecorder(sim.ws_url, CLIENT)
    socket.wait_done(submit(sim, tmp_path), COLD_RUN_S)
    loaded = sim.state()["model_loads"]
    socket.take()
    # When it runs again with another seed, so the sampler and everything after it run anew
    body = {"prompt": bound_workflow(dance_values(seed="8")), "client_id": CLIENT}
    response = requests.post(f"{sim.url}/prompt", json=body, timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 200, response.text
    second = response.json()["prompt_id"]
    frames = socket.wait_done(second, COLD_RUN_S)
    # Then the sampler ran, no model was loaded again, and the run is shorter than even one load
    assert "progress" in frames_of_node(frames, SAMPLER)
    assert sim.state()["model_loads"] == loaded
    assert run_span_s(sim, second) < LOAD_S


def test_freeing_memory_makes_the_next_prompt_read_its_models_again(comfysim: Any, tmp_path: Path) -> None:
    # Given a simulator that ran the workflow once
    sim = comfysim(exec_s=0.1, model_load_s=LOAD_S)
    socket = WsRecorder(sim.ws_url, CLIENT)
    socket.wait_done(submit(sim, tmp_path), COLD_RUN_S)
    first = len(sim.state()["model_loads"])
    # When POST /free drops the cached loader outputs and the workflow runs again
    response = requests.post(f"{sim.url}/free", json={"free_memory": True}, timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 200
    (tmp_path / "again").mkdir()
    second = submit(sim, tmp_path / "again")
    socket.wait_done(second, COLD_RUN_S)
    # Then every model was read once more
    assert len(sim.state()["model_loads"]) == 2 * first
    assert run_span_s(sim, second) >= LOAD_S * first


def test_a_simulator_started_without_the_option_loads_models_instantly_and_the_environment_can_set_it() -> None:
    # Given no option, then the environment variable, then both
    # When the settings are resolved
    # Then the default is 0, COMFYSIM_MODEL_LOAD_S sets it, and the command line wins
    assert settings_from_args([], {}).model_load_s == 0.0
    assert settings_from_args([], {"COMFYSIM_MODEL_LOAD_S": "3"}).model_load_s == 3.0
    assert settings_from_args(["--model-load-s", "1.5"], {"COMFYSIM_MODEL_LOAD_S": "3"}).model_load_s == 1.5

"""Driving one prompt to its outcome over real HTTP and WebSocket, against the simulator."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from tests.support.jobs import sample_media
from worker.comfy_http import ComfyHttp
from worker.comfy_ws import EventSocket
from worker.prompt_run import PromptOutcome, PromptRun
from worker.settings import DEFAULT_WORKFLOW_PATH
from worker.workflow import load_workflow


def bound_graph(http: ComfyHttp, folder: Path) -> dict[str, Any]:
    sample_media(folder)
    image = http.upload_image(folder / "character.png", "exec-ref.png")
    video = http.upload_image(folder / "dance.mp4", "exec-clip.mp4")
    return load_workflow(DEFAULT_WORKFLOW_PATH).bind({
        "reference_image_filename": image, "dance_video_filename": video, "prompt": "p", "negative_prompt": "n",
        "width": 128, "height": 224, "steps": 2, "cfg": 1.0, "seed": 7, "output_prefix": "dance/exec/dance",
        "job_id": "exec",
    })


def run_once(http: ComfyHttp, url: str, graph: dict[str, Any], client_id: str) -> PromptOutcome:
    sock = EventSocket(url, client_id)
    sock.connect()
    try:
        submitted = http.queue_prompt(graph, client_id, {})
        run = PromptRun(http, sock, submitted.prompt_id, 60.0, threading.Event(), lambda _: None)
        return run.wait()
    finally:
        sock.close()


def test_a_fully_cached_resubmit_still_yields_its_outputs(comfysim: Any, tmp_path: Path) -> None:
    # Given a prompt that ran once
    sim = comfysim(exec_s=0.2)
    http = ComfyHttp(sim.url, timeout_s=10)
    graph = bound_graph(http, tmp_path)
    first = run_once(http, sim.url, graph, "exec-client-1")
    # When the identical prompt is submitted again, so ComfyUI serves every node from its cache
    second = run_once(http, sim.url, graph, "exec-client-2")
    # Then the outcome still lists the saved files, read from the history, and they can be fetched
    assert set(second.cached_nodes) == set(graph)
    assert [o.filename for o in second.outputs] == [o.filename for o in first.outputs]
    with http.view(second.outputs[0]) as body:
        assert body.read(12)[4:8] == b"ftyp"


def test_temp_previews_are_not_collected(comfysim: Any, tmp_path: Path) -> None:
    # Given the workflow plus an unsaved preview combine (save_output false goes to temp)
    sim = comfysim(exec_s=0.1)
    http = ComfyHttp(sim.url, timeout_s=10)
    graph = bound_graph(http, tmp_path)
    preview = dict(graph["139"], inputs={**graph["139"]["inputs"], "save_output": False, "filename_prefix": "pv"})
    graph["137"] = preview
    outcome = run_once(http, sim.url, graph, "exec-client-3")
    assert [o.node_id for o in outcome.outputs] == ["139"]
    assert all(o.type == "output" for o in outcome.outputs)

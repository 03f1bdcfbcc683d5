"""Model files copied into or deleted from a running ComfyUI: the worker's capabilities and readiness follow.

ComfyUI's model lists follow its folders without a restart (folder_paths.cached_filename_list_ rescans a
folder whose mtime moved); the simulator models that with POST /__sim__/models. A ready worker repeats its
full check every COMFYUI_FULL_CHECK_INTERVAL_S.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from producer import capabilities
from tests.fixtures.workers import Cluster
from tests.support.jobs import dance_request
from tests.support.processes import wait_until

#: The full-check interval of these tests' workers, in seconds.
FULL_CHECK_S = "1"
#: A model file the dance workflow does not need (the core catalogue's one upscale model).
UPSCALER = "tiny_compact_x2.safetensors"
#: A model file the dance workflow needs.
DANCE_VAE = "Wan2.1_VAE.pth"


def _upscale_workflow() -> dict[str, Any]:
    return {
        "1": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": UPSCALER}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["1", 0], "image": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "up"}},
    }


def test_a_model_file_copied_into_a_running_comfyui_is_offered_to_routing_without_a_restart(
    cluster: Cluster, comfysim: Any
) -> None:
    # Given a ready worker whose ComfyUI lacks the upscale model, so a workflow using it has nowhere to run
    sim = comfysim(missing_model=[UPSCALER])
    worker = cluster.start_worker("w", sim.url, COMFYUI_FULL_CHECK_INTERVAL_S=FULL_CHECK_S)
    broker = redis.Redis.from_url(cluster.broker_url)
    wait_until(lambda: not capabilities.missing_for(broker, "dance", {}).no_workers, 60, "published capabilities")
    assert capabilities.missing_for(broker, "dance", _upscale_workflow()).models == [UPSCALER]
    # When the operator copies the file into ComfyUI's folder
    sim.request("POST", "/__sim__/models", {"missing": []})
    # Then the queue's capabilities offer it within a few full-check intervals, the worker never restarted
    wait_until(lambda: not capabilities.missing_for(broker, "dance", _upscale_workflow()).models, 30,
               "the new model file to be offered")
    assert worker.popen is not None and worker.popen.poll() is None
    # and when it is deleted again, it is no longer offered
    sim.request("POST", "/__sim__/models", {"missing": [UPSCALER]})
    wait_until(lambda: capabilities.missing_for(broker, "dance", _upscale_workflow()).models == [UPSCALER], 30,
               "the deleted model file to be withdrawn")


def test_a_worker_whose_comfyui_loses_a_model_the_workflow_needs_takes_nothing_until_it_is_back(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a ready worker
    sim = comfysim(exec_s=0.2)
    worker = cluster.start_worker("w", sim.url, COMFYUI_FULL_CHECK_INTERVAL_S=FULL_CHECK_S)
    worker.wait_for_log("taking tasks")
    # When the dance workflow's VAE file disappears from ComfyUI (a models volume unmounted)
    sim.request("POST", "/__sim__/models", {"missing": [DANCE_VAE]})
    # Then the worker pauses, naming the file
    worker.wait_for_log("pausing consumption", timeout_s=30)
    assert DANCE_VAE in worker.log().split("pausing consumption")[0].splitlines()[-1]
    wait_until(lambda: worker.log().count("detached until ComfyUI is ready") == 2, 30, "the queues detached")
    # and a job submitted meanwhile is not sent to a ComfyUI that would reject it
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path), job_id="waits-for-vae")
        # When the file is back, the worker resumes and the job succeeds
        sim.request("POST", "/__sim__/models", {"missing": []})
        assert handle.result(timeout_s=60)["status"] == "succeeded"
    worker.wait_for_log("resuming consumption")
    # with the one prompt ComfyUI accepted, after the file came back
    assert sim.state()["prompts_received"] == 1

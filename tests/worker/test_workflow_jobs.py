"""Workflow jobs (``dance.workflow``) on the dance job's path: asset inputs, asset outputs, capability refusal,
cancel, and one GPU run through three visibility timeouts (real workers, Redis, S3 and simulators)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from blake3 import blake3
from PIL import Image

from producer import assets, capabilities, keys
from producer.errors import DanceError
from tests.fixtures.workers import Cluster
from tests.support.jobs import job_counter, queued_messages
from tests.support.processes import wait_until
from tests.worker.test_ownership import FAST, _gpu_runs, _outlast_visibility_timeouts
from worker.storage import open_storage

#: The API key name the tests' assets and jobs belong to.
OWNER = "team-a"
#: Size of the test picture, in pixels.
PICTURE_PX = (32, 24)


def _picture(path: Path) -> np.ndarray:
    """A small gradient PNG written to ``path``; returns its RGB pixels."""
    width, height = PICTURE_PX
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    pixels = np.stack([xs * 7 % 256, ys * 9 % 256, (xs + ys) * 3 % 256], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def _invert_workflow(asset_id: str) -> dict[str, Any]:
    """LoadImage (the asset) -> ImageInvert -> SaveImage, in the API format."""
    reference = {"__type": "core/ASSET", "info": {"id": asset_id, "file_path": "in.png"}}
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": reference}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inverted"}},
    }


def _image_asset(broker: redis.Redis, storage_url: str, folder: Path) -> tuple[assets.AssetRecord, np.ndarray]:
    pixels = _picture(folder / "in.png")
    record, _ = assets.store_file(broker, open_storage(storage_url), folder / "in.png", content_type="image/png",
                                  file_path="in.png", owner=OWNER)
    return record, pixels


def _published(broker: redis.Redis, queue: str = "dance") -> bool:
    return not capabilities.missing_for(broker, queue, {}).no_workers


def test_a_workflow_job_with_an_uploaded_image_asset_runs_end_to_end_and_its_outputs_are_assets_in_storage(
    cluster: Cluster, comfysim: Any, s3_env: Any, tmp_path: Path
) -> None:
    # Given a worker whose storage is a real S3 server and who shares its ComfyUI's folders, and an image
    # uploaded to that storage as an asset of team-a
    storage_url = f"s3://{s3_env.bucket}/workflows"
    sim = comfysim()
    env = {k: v for k, v in s3_env.env.items() if k != "AWS_MAX_ATTEMPTS"}
    cluster.start_worker("w", sim.url, DANCE_STORAGE_URL=storage_url, COMFYUI_INPUT_DIR=str(sim.data_dir / "input"),
                         COMFYUI_OUTPUT_DIR=str(sim.data_dir / "output"), **env)
    broker = redis.Redis.from_url(cluster.broker_url)
    image, pixels = _image_asset(broker, storage_url, tmp_path)
    # When a workflow that inverts it is submitted and awaited
    with cluster.client() as client:
        result = client.submit_workflow(_invert_workflow(image.id), job_id="wf-e2e", owner=OWNER).result(timeout_s=60)
    # Then its one output is an asset of this job and owner, whose bytes in S3 hash to the asset's hash
    [output] = result["outputs"]
    assert (result["kind"], result["status"], output["node_id"], output["type"]) == (
        "workflow", "succeeded", "3", "image")
    record = assets.load(broker, output["asset_id"])
    assert record is not None and (record.job_id, record.owner, record.hash) == ("wf-e2e", OWNER, output["hash"])
    body = s3_env.client().get_object(Bucket=s3_env.bucket, Key=f"workflows/{record.key}")["Body"].read()
    assert "blake3:" + blake3(body).hexdigest() == record.hash and len(body) == output["size_bytes"]
    # and it is the uploaded image inverted: ComfyUI read the asset through a run-scoped upload
    saved = np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype(int)
    assert np.abs(saved - (255 - pixels.astype(int))).max() <= 1
    prompt = sim.last_prompt()
    assert prompt["1"]["inputs"]["image"].startswith("dance-wf-e2e~")
    assert prompt["3"]["inputs"]["filename_prefix"].startswith("dance/wf-e2e~")
    # and the manifest was written once
    assert result["manifest"]["uri"].endswith("/wf-e2e/manifest.json")
    assert job_counter(cluster.broker_url, keys.manifest_writes("wf-e2e")) == 1
    # and the janitor leaves nothing of the run in ComfyUI: not the uploaded asset, not the saved image
    def leftovers() -> list[str]:
        found = list((sim.data_dir / "input").glob("dance-wf-e2e~*"))
        return [path.name for path in found + list((sim.data_dir / "output" / "dance").glob("wf-e2e~*"))]

    assert [name for name in sim.state()["uploads"] if name.startswith("dance-wf-e2e~")]
    wait_until(lambda: not leftovers(), 30, "the run's files to be cleaned")


def test_a_workflow_with_a_node_class_no_worker_has_is_refused_before_queueing_with_the_class_named(
    cluster: Cluster, comfysim: Any
) -> None:
    # Given a ready worker of queue "dance" that has published what its ComfyUI offers
    sim = comfysim()
    cluster.start_worker("w", sim.url)
    broker = redis.Redis.from_url(cluster.broker_url)
    wait_until(lambda: _published(broker), 60, "the worker to publish its capabilities")
    workflow = {
        "1": {"class_type": "NoSuchNode", "inputs": {}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "absent_x4.safetensors"}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
    }
    # When a workflow with a node class and a model file that worker lacks is submitted
    with cluster.client() as client, pytest.raises(DanceError) as refused:
        client.submit_workflow(workflow, job_id="wf-unknown-node")
    # Then it is refused for good, naming the class, the model file and the queue
    assert refused.value.code == "capability.missing" and not refused.value.retryable
    assert refused.value.details == {"nodes": ["NoSuchNode"], "models": ["absent_x4.safetensors"], "queue": "dance"}
    # and nothing was queued or claimed
    assert queued_messages(cluster.broker_url) == 0 and sim.state()["prompts_received"] == 0
    assert not broker.exists(keys.submitted("wf-unknown-node"))


def test_a_killed_worker_drops_out_of_its_queues_capabilities_once_their_ttl_passes(
    cluster: Cluster, comfysim: Any
) -> None:
    # Given a ready worker that has published its capabilities
    worker = cluster.start_worker("w", comfysim().url)
    broker = redis.Redis.from_url(cluster.broker_url)
    wait_until(lambda: _published(broker), 60, "the worker to publish its capabilities")
    # When it is killed, so that it cleans nothing up
    worker.kill()
    # Then its queue has no live worker once the record's TTL has passed
    wait_until(lambda: not _published(broker), 4 * capabilities.CAPABILITIES_TTL_S, "the record to expire")


def test_cancelling_a_running_workflow_job_stops_its_prompt(cluster: Cluster, comfysim: Any, tmp_path: Path) -> None:
    # Given a workflow job whose prompt is held mid-graph on the GPU
    sim = comfysim()
    sim.faults({"hold": True, "hold_class": "ImageInvert"})
    cluster.start_worker("w", sim.url)
    broker = redis.Redis.from_url(cluster.broker_url)
    image, _ = _image_asset(broker, cluster.storage_url, tmp_path)
    with cluster.client() as client:
        handle = client.submit_workflow(_invert_workflow(image.id), job_id="wf-cancel", owner=OWNER)
        wait_until(lambda: sim.state()["held"], 30, "the prompt to be held")
        # When the job is cancelled
        handle.cancel()
        with pytest.raises(DanceError) as ended:
            handle.result(timeout_s=60)
    # Then it ends cancelled, and its one prompt was interrupted and stopped running
    assert ended.value.code == "job.cancelled"
    wait_until(lambda: len(sim.state()["runs"]) == 1 and sim.state()["running"] is None, 30, "the prompt to stop")
    assert sim.state()["interrupts"] >= 1 and not sim.state()["held"]
    assert sim.state()["runs"][0][3] == "wf-cancel"
    assert job_counter(cluster.broker_url, keys.manifest_writes("wf-cancel")) == 0


def test_a_workflow_job_that_outlasts_three_visibility_timeouts_runs_exactly_once(
    cluster: Cluster, comfysim: Any, tmp_path: Path
) -> None:
    # Given two ready workers with a short visibility timeout, each of whose GPUs holds the graph mid-way
    sim_a, sim_b = comfysim(), comfysim()
    for sim in (sim_a, sim_b):
        sim.faults({"hold": True, "hold_class": "ImageInvert"})
    workers = [cluster.start_worker(name, sim.url, **FAST) for name, sim in (("a", sim_a), ("b", sim_b))]
    for worker in workers:
        worker.wait_for_log(" ready.")
    broker = redis.Redis.from_url(cluster.broker_url)
    image, _ = _image_asset(broker, cluster.storage_url, tmp_path)
    with cluster.client() as client:
        handle = client.submit_workflow(_invert_workflow(image.id), job_id="wf-long", owner=OWNER)
        wait_until(lambda: sim_a.state()["held"] or sim_b.state()["held"], 30, "the prompt to be held")
        holder = sim_a if sim_a.state()["held"] else sim_b
        # When its execution outlasts three visibility timeouts before it finishes
        _outlast_visibility_timeouts(broker)
        holder.release()
        result = handle.result(timeout_s=90)
    # Then it succeeded from one GPU run, with one prompt and one manifest
    assert result["status"] == "succeeded" and len(result["outputs"]) == 1
    assert _gpu_runs(sim_a, sim_b) == 1
    assert job_counter(cluster.broker_url, keys.executions("wf-long")) == 1
    assert job_counter(cluster.broker_url, keys.manifest_writes("wf-long")) == 1

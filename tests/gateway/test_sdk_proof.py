"""The official Comfy API v2 SDK (comfy-sdk 0.5.0, unmodified) is the client of these tests, against the test
cluster: a real gateway process and simulator-backed worker processes on one real Redis, both storing in a
real SeaweedFS S3 server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from blake3 import blake3
from comfy_sdk import Comfy, ComfyError, InvalidWorkflow
from comfy_sdk.events import OutputReady, Progress, StatusChange
from PIL import Image

from harness.seaweed import S3Server
from producer import capabilities
from tests.fixtures.workers import Cluster
from tests.gateway.conftest import ALICE_KEY, StartGateway
from tests.support.jobs import queued_messages
from tests.support.processes import wait_until

#: The workflow file these tests load, as ComfyUI's "Save (API Format)" writes one.
WORKFLOW_FILE = Path(__file__).parent / "workflows" / "invert.json"
#: Size of the uploaded picture, in pixels.
PICTURE_PX = (24, 16)
#: Longest wait for a job in these tests, in seconds.
JOB_TIMEOUT_S = 60.0


@dataclass
class SdkCluster:
    sim: Any
    client: Comfy
    s3: S3Server
    prefix: str


@pytest.fixture
def sdk_cluster(cluster: Cluster, comfysim: Any, s3_env: S3Server, start_gateway: StartGateway,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[SdkCluster]:
    """A ready worker whose GPU holds ImageInvert until released, a gateway, both on S3, and the SDK's
    client pointed at the gateway the way the SDK documents it (COMFY_BASE_URL) with alice's key."""
    prefix = f"sdk-{uuid.uuid4().hex[:8]}"
    storage = {"DANCE_STORAGE_URL": f"s3://{s3_env.bucket}/{prefix}",
               **{k: v for k, v in s3_env.env.items() if k != "AWS_MAX_ATTEMPTS"}}
    sim = comfysim()
    sim.faults({"hold": True, "hold_class": "ImageInvert"})
    cluster.start_worker("w", sim.url, COMFYUI_INPUT_DIR=str(sim.data_dir / "input"),
                         COMFYUI_OUTPUT_DIR=str(sim.data_dir / "output"), **storage)
    broker = redis.Redis.from_url(cluster.broker_url)
    wait_until(lambda: not capabilities.missing_for(broker, "dance", {}).no_workers, 60,
               "the worker to publish its capabilities")
    gateway = start_gateway(**storage)
    monkeypatch.setenv("COMFY_BASE_URL", gateway.url)
    with Comfy(api_key=ALICE_KEY) as client:
        yield SdkCluster(sim, client, s3_env, prefix)


def picture(path: Path) -> np.ndarray:
    """A small gradient PNG written to ``path``; returns its RGB pixels."""
    width, height = PICTURE_PX
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    pixels = np.stack([xs * 11 % 256, ys * 13 % 256, (xs + ys) * 5 % 256], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def runs_of(sim: Any, job_id: str) -> int:
    """GPU runs of the job in the simulator's own records."""
    return sum(1 for run in sim.state()["runs"] if run[3] == job_id)


def test_the_sdk_runs_a_workflow_file_on_an_uploaded_image_follows_its_events_and_downloads_the_inverted_image(
    sdk_cluster: SdkCluster, tmp_path: Path
) -> None:
    # Given a workflow exported to a file, and a picture
    sim, client = sdk_cluster.sim, sdk_cluster.client
    pixels = picture(tmp_path / "dancer.png")
    # When the SDK loads the workflow, uploads the picture as its LoadImage input and submits it
    workflow = client.workflows.from_file(WORKFLOW_FILE)
    image = client.assets.from_file(tmp_path / "dancer.png")
    workflow.set_input("1", "image", image)
    job = client.submit(workflow)
    # Then the picture is an asset addressed by its blake3, stored new
    assert image.id is not None and image.created_new is True
    assert image.hash == "blake3:" + blake3((tmp_path / "dancer.png").read_bytes()).hexdigest()
    # When the SDK follows the job's events, letting the GPU step end once the run reports progress by nodes
    events: list[Any] = []
    for event in job.events():
        events.append(event)
        if isinstance(event, Progress) and event.nodes_total and sim.state()["held"]:
            sim.release()
    # Then it saw the job running with its progress, its output announced, and the end: succeeded
    statuses = [event.status for event in events if isinstance(event, StatusChange)]
    assert "running" in statuses and statuses[-1] == "succeeded", events
    assert any(isinstance(event, Progress) and event.message for event in events), events
    # and, held in ImageInvert, the run was past LoadImage of the graph's three nodes: value weighed by nodes
    by_nodes = [event for event in events if isinstance(event, Progress) and event.nodes_total]
    assert by_nodes and (by_nodes[0].nodes_done, by_nodes[0].nodes_total) == (1, 3), by_nodes
    assert 1 / 3 <= by_nodes[0].value < 2 / 3, by_nodes
    [announced] = [event.output for event in events if isinstance(event, OutputReady)]
    # When it polls the job (the source of truth) and downloads its output to a file
    done = job.result()
    [output] = done.outputs
    path = output.to_file(tmp_path / "out.png")
    # Then the output is the announced one, an image of node 3, and its bytes are the picture inverted
    assert (output.id, output.node_id, output.type, output.job_id) == (announced.id, "3", "image", job.id)
    assert output.size_bytes == path.stat().st_size
    saved = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert np.abs(saved - (255 - pixels.astype(int))).max() <= 1
    # and those bytes are the blob in S3 that the output's hash addresses
    digest = blake3(path.read_bytes()).hexdigest()
    blob = sdk_cluster.s3.client().get_object(Bucket=sdk_cluster.s3.bucket,
                                              Key=f"{sdk_cluster.prefix}/assets/blake3/{digest}")
    assert blob["Body"].read() == path.read_bytes() and announced.id == output.id
    # and its download URL is S3's presigned one, the gateway's content route redirecting there
    assert "X-Amz-Signature=" in output.get_download_url().url
    # and the job gives back the graph it ran: the file's, its image input the asset's reference
    ran = done.get_workflow()
    assert ran.format == "api" and ran.graph["1"]["inputs"]["image"]["info"]["id"] == image.id
    assert {node: spec["class_type"] for node, spec in ran.graph.items()} == {
        "1": "LoadImage", "2": "ImageInvert", "3": "SaveImage"}
    # and the same picture uploaded again is the same blob, found by its hash, not stored anew
    again = client.assets.from_file(tmp_path / "dancer.png")
    again.commit()
    assert again.created_new is False and again.hash == image.hash
    assert runs_of(sim, job.id) == 1 and sim.state()["prompts_received"] == 1


def test_the_sdk_cancels_a_running_job_whose_prompt_is_interrupted_and_which_ends_canceled(
    sdk_cluster: SdkCluster, tmp_path: Path
) -> None:
    # Given a job the SDK submitted, running on a GPU that holds its ImageInvert step
    sim, client = sdk_cluster.sim, sdk_cluster.client
    picture(tmp_path / "dancer.png")
    workflow = client.workflows.from_file(WORKFLOW_FILE)
    workflow.set_input("1", "image", client.assets.from_file(tmp_path / "dancer.png"))
    job = client.submit(workflow)
    wait_until(lambda: sim.state()["held"], 30, "the prompt to be held")
    # When the SDK cancels it mid-run
    job.cancel()
    # Then the answer reads canceling (or already canceled), and polling ends it canceled
    assert job.status in ("canceling", "canceled")
    assert job.wait(timeout=JOB_TIMEOUT_S).status == "canceled"
    # and its one prompt was interrupted: one GPU run of the job, and no output
    wait_until(lambda: sim.state()["running"] is None, 30, "the prompt to stop")
    assert sim.state()["interrupts"] == 1 and runs_of(sim, job.id) == 1
    assert job.outputs == [] and client.jobs.get(job.id).status == "canceled"


def test_the_sdk_gets_its_typed_errors_invalid_workflow_naming_a_node_class_no_worker_has_and_no_labels(
    sdk_cluster: SdkCluster, cluster: Cluster, tmp_path: Path
) -> None:
    # Given the workflow file with its invert node changed to a class no worker of the queue has
    client = sdk_cluster.client
    picture(tmp_path / "dancer.png")
    image = client.assets.from_file(tmp_path / "dancer.png")
    workflow = client.workflows.from_file(WORKFLOW_FILE)
    workflow.json["2"]["class_type"] = "NoSuchNodeAnywhere"
    workflow.set_input("1", "image", image)
    # When the SDK submits it
    with pytest.raises(InvalidWorkflow) as refused:
        client.submit(workflow)
    # Then it raises the typed InvalidWorkflow, 422, naming the missing class
    assert refused.value.http_status == 422 and refused.value.code == "invalid_workflow"
    assert "NoSuchNodeAnywhere" in refused.value.message
    assert refused.value.details is not None and "NoSuchNodeAnywhere" in refused.value.details["nodes"]
    # When the runnable file is submitted with job labels, which this cluster does not keep
    runnable = client.workflows.from_file(WORKFLOW_FILE)
    runnable.set_input("1", "image", image)
    with pytest.raises(ComfyError) as labelled:
        client.submit(runnable, metadata={"client": "acme"})
    # Then the SDK reads the code it documents for a surface without labels
    assert (labelled.value.http_status, labelled.value.code) == (422, "metadata_not_supported")
    # and neither submit queued anything or reached a GPU
    assert queued_messages(cluster.broker_url) == 0 and sdk_cluster.sim.state()["prompts_received"] == 0

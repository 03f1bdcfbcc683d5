"""The official comfy-sdk against a real ``dance gateway``, simulator-backed workers, real Redis and real
S3 (SeaweedFS): a workflow from a file with an uploaded image, its events, its output downloaded through
the presigned redirect, a cancel mid-run, the typed error for a node class no worker has, and assets
that one key cannot see of another's."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from comfy_sdk import Comfy
from comfy_sdk.exceptions import InvalidWorkflow, NotFound
from PIL import Image

from harness.seaweed import S3Server
from producer import capabilities
from tests.fixtures.workers import Cluster
from tests.gateway.conftest import ALICE_KEY, BOB_KEY, StartGateway
from tests.support.processes import wait_until

#: How long a job of these tests may take to end, in seconds.
JOB_TIMEOUT_S = 60.0
#: The colour of the uploaded image, and the one its inverted output must have.
COLOUR, INVERTED = (200, 30, 90), (55, 225, 165)


@pytest.fixture
def cluster(redis_db: str, tmp_path: Path, s3_env: S3Server) -> Iterator[Cluster]:
    """The suite's cluster, with its storage in S3: workers and gateways inherit the S3 environment."""
    cluster = Cluster(broker_url=redis_db, root=tmp_path, storage_url=f"s3://{s3_env.bucket}/sdk-{uuid.uuid4().hex[:8]}")
    yield cluster
    for process in cluster.workers:
        process.stop(timeout_s=15)


def workflow_file(folder: Path, class_type: str = "ImageInvert") -> Path:
    """LoadImage -> ``class_type`` -> SaveImage, the API format, with a file name where the image goes."""
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
             "2": {"class_type": class_type, "inputs": {"image": ["1", 0]}},
             "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inverted"}}}
    path = folder / f"workflow-{class_type}.json"
    path.write_text(json.dumps(graph))
    return path


def image_file(folder: Path) -> Path:
    path = folder / "photo.png"
    Image.new("RGB", (16, 12), COLOUR).save(path)
    return path


def ready(cluster: Cluster, sim: Any) -> None:
    cluster.start_worker("w", sim.url, COMFYUI_INPUT_DIR=str(sim.data_dir / "input"),
                         COMFYUI_OUTPUT_DIR=str(sim.data_dir / "output"))
    broker = redis.Redis.from_url(cluster.broker_url)
    wait_until(lambda: not capabilities.missing_for(broker, "dance", {}).no_workers, JOB_TIMEOUT_S,
               "the worker to publish its capabilities")


@pytest.fixture
def sdk_for(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Factory: an SDK client of the gateway at ``url`` with ``key``; all are closed at the end."""
    clients: list[Comfy] = []

    def factory(url: str, key: str) -> Comfy:
        monkeypatch.setenv("COMFY_BASE_URL", url)
        client = Comfy(api_key=key)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


def test_the_sdk_runs_a_workflow_file_with_an_uploaded_image_and_downloads_its_output_from_s3(
    cluster: Cluster, comfysim: Any, tmp_path: Path, start_gateway: StartGateway, sdk_for: Any
) -> None:
    # Given a ready worker, a gateway, a workflow file and an image
    sim = comfysim()
    ready(cluster, sim)
    client = sdk_for(start_gateway().url, ALICE_KEY)
    workflow = client.workflows.from_file(workflow_file(tmp_path))
    workflow.set_input("1", "image", client.assets.from_file(image_file(tmp_path)))
    # When the SDK submits it and follows its events to the end
    job = client.submit(workflow)
    statuses = [event.status for event in job.events() if hasattr(event, "status")]
    done = job.wait(timeout=JOB_TIMEOUT_S)
    # Then the job succeeded, its events ended with it, and its one output downloads as the inverted image
    assert done.status == "succeeded" and statuses[-1] == "succeeded", statuses
    [output] = done.outputs
    assert (output.node_id, output.type, output.job_id) == ("3", "image", job.id)
    picture = Image.open(io.BytesIO(output.to_bytes()))
    assert picture.size == (16, 12)
    pixel = picture.convert("RGB").getpixel((0, 0))
    assert isinstance(pixel, tuple)
    # Within one step per channel: the inversion runs in floating point (1.0 - x), then rounds.
    assert all(abs(got - want) <= 1 for got, want in zip(pixel, INVERTED, strict=True)), pixel
    # and its download URL is S3's presigned one, the gateway's content route redirecting there
    assert "X-Amz-Signature=" in output.get_download_url().url
    assert sim.state()["prompts_received"] == 1


def test_the_sdk_cancels_a_running_job_and_gets_the_typed_error_for_a_node_no_worker_has(
    cluster: Cluster, comfysim: Any, tmp_path: Path, start_gateway: StartGateway, sdk_for: Any
) -> None:
    # Given a ready worker whose simulator holds the workflow's ImageInvert node, and a gateway
    sim = comfysim(exec_s=0.2)
    ready(cluster, sim)
    sim.faults({"hold": True, "hold_class": "ImageInvert"})
    client = sdk_for(start_gateway(DANCE_GATEWAY_SSE_POLL_INTERVAL_S="0.5").url, ALICE_KEY)
    image = client.assets.from_file(image_file(tmp_path))
    running = client.workflows.from_file(workflow_file(tmp_path))
    running.set_input("1", "image", image)
    job = client.submit(running)
    wait_until(lambda: sim.state()["held"], JOB_TIMEOUT_S, "the prompt to be held mid-run")
    # When the SDK cancels it, and submits a graph with a node class no worker has
    job.cancel()
    unknown = client.workflows.from_file(workflow_file(tmp_path, "NoSuchNodeAnywhere"))
    unknown.set_input("1", "image", image)
    with pytest.raises(InvalidWorkflow) as refused:
        client.submit(unknown)
    # Then the job ends canceled with its prompt interrupted, and the refusal names the missing class
    assert job.wait(timeout=JOB_TIMEOUT_S).status == "canceled"
    wait_until(lambda: sim.state()["interrupts"] == 1, JOB_TIMEOUT_S, "the interrupt")
    assert "NoSuchNodeAnywhere" in json.dumps(refused.value.details)


def test_an_asset_one_key_uploaded_is_not_found_by_another_which_may_still_upload_the_same_bytes(
    cluster: Cluster, tmp_path: Path, start_gateway: StartGateway, sdk_for: Any
) -> None:
    # Given an image alice uploaded through the gateway
    url = start_gateway().url
    alice, bob = sdk_for(url, ALICE_KEY), sdk_for(url, BOB_KEY)
    photo = image_file(tmp_path)
    alices = alice.assets.from_file(photo)
    asset_id = alices.commit()
    # When bob asks for it by id, then commits the same bytes himself
    with pytest.raises(NotFound):
        bob.assets.get(asset_id)
    bobs = bob.assets.from_file(photo)
    bobs_id = bobs.commit()
    # Then his is an asset of his own over the one stored blob, which alice cannot see either
    assert bobs_id != asset_id and bobs.created_new is False and bobs.hash == alices.hash
    with pytest.raises(NotFound):
        alice.assets.get(bobs_id)
    assert alice.assets.get(asset_id).id == asset_id

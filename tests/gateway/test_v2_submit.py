"""POST /api/v2/jobs: workflow jobs with asset inputs, Idempotency-Key, and the typed refusals, on real workers."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, cast

import redis
from comfy_low.models import Job as LowJob
from PIL import Image

from producer import assets, capabilities
from tests.fixtures.workers import Cluster
from tests.gateway.conftest import BOB_KEY, Gateway, StartGateway
from tests.support.jobs import queued_messages
from tests.support.processes import wait_until
from worker.storage import open_storage

#: Alice's key name in tests/gateway/conftest.py: the owner of her jobs and assets.
ALICE = "alice"


def invert_workflow(asset_id: str) -> dict[str, Any]:
    """LoadImage (the asset) -> ImageInvert -> SaveImage, in the API format."""
    reference = {"__type": "core/ASSET", "info": {"id": asset_id, "file_path": "in.png"}}
    return {"1": {"class_type": "LoadImage", "inputs": {"image": reference}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inverted"}}}


def alice_image(cluster: Cluster, folder: Path) -> assets.AssetRecord:
    Image.new("RGB", (16, 12), (200, 30, 90)).save(folder / "in.png")
    record, _ = assets.store_file(redis.Redis.from_url(cluster.broker_url), open_storage(cluster.storage_url),
                                  folder / "in.png", content_type="image/png", file_path="in.png", owner=ALICE)
    return record


def ready_gateway(cluster: Cluster, comfysim: Any, start_gateway: StartGateway) -> tuple[Any, Gateway]:
    """A worker whose capabilities are published, and a gateway."""
    sim = comfysim()
    cluster.start_worker("w", sim.url, COMFYUI_INPUT_DIR=str(sim.data_dir / "input"),
                         COMFYUI_OUTPUT_DIR=str(sim.data_dir / "output"))
    broker = redis.Redis.from_url(cluster.broker_url)
    wait_until(lambda: not capabilities.missing_for(broker, "dance", {}).no_workers, 60,
               "the worker to publish its capabilities")
    return sim, start_gateway()


def gateway_records(cluster: Cluster) -> list[bytes]:
    return list(redis.Redis.from_url(cluster.broker_url).keys("dance:gw:job:*"))


def test_a_workflow_with_an_idempotency_key_runs_once_its_outputs_are_assets_and_a_reuse_is_refused(
    cluster: Cluster, comfysim: Any, tmp_path: Path, start_gateway: StartGateway
) -> None:
    # Given a ready worker, a gateway and an image asset of alice
    sim, gateway = ready_gateway(cluster, comfysim, start_gateway)
    image = alice_image(cluster, tmp_path)
    body = {"workflow": invert_workflow(image.id)}
    # When alice submits the workflow with an Idempotency-Key, then sends the same request again
    first = gateway.call("POST", "/api/v2/jobs", json=body, headers={"Idempotency-Key": "order-1"})
    again = gateway.call("POST", "/api/v2/jobs", json=body, headers={"Idempotency-Key": "order-1"})
    # Then the first is created, the second refused as a reuse naming the job, and nothing more was queued
    assert first.status_code == 201, first.text
    job = first.json()
    assert job["status"] in ("queued", "running") and job["kind"] == "workflow"
    assert job["urls"]["events"] == f"{gateway.url}/api/v2/jobs/{job['id']}/events"
    assert again.status_code == 422 and again.json()["error"]["code"] == "idempotency_key_reuse"
    assert again.json()["error"]["details"]["job_id"] == job["id"]
    # and the job succeeds with its saved image as an asset of alice, fetchable by its content link
    def succeeded() -> dict[str, Any] | None:
        current: dict[str, Any] = gateway.call("GET", f"/api/v2/jobs/{job['id']}").json()
        return current if current["status"] == "succeeded" else None

    done = cast(dict[str, Any], wait_until(succeeded, 60, "the workflow job to succeed"))
    # (both bodies are the contract's Job, as the official SDK's generated models read it)
    assert LowJob.model_validate(job).id == LowJob.model_validate(done).id == job["id"]
    # and it tells when its run started, between its creation and its end
    created, started, completed = (datetime.fromisoformat(done[name]) for name in
                                   ("created_at", "started_at", "completed_at"))
    assert created <= started <= completed
    [output] = done["outputs"]
    record = assets.load(redis.Redis.from_url(cluster.broker_url), output["id"])
    assert record is not None and (record.owner, record.job_id) == (ALICE, job["id"])
    assert (output["type"], output["node_id"], output["hash"]) == ("image", "3", record.hash)
    assert output["url"] == f"{gateway.url}/api/v2/assets/{output['id']}/content"
    # and its event stream, opened after the end, gives the whole outcome at once
    events = list(gateway.events(job["id"]))
    assert events[0] == ("status", {"status": "succeeded", "queue_position": None})
    assert [data["id"] for name, data in events if name == "output"] == [output["id"]]
    assert sim.state()["prompts_received"] == 1


def test_a_workflow_no_worker_can_run_or_with_an_asset_of_another_key_is_refused_and_leaves_nothing(
    cluster: Cluster, comfysim: Any, tmp_path: Path, start_gateway: StartGateway
) -> None:
    # Given a ready worker and an image asset of alice
    sim, gateway = ready_gateway(cluster, comfysim, start_gateway)
    image = alice_image(cluster, tmp_path)
    unknown_node = invert_workflow(image.id)
    unknown_node["2"]["class_type"] = "NoSuchNodeAnywhere"
    # When alice submits a graph with a node class no worker has, and bob one that uses alice's asset
    missing_node = gateway.call("POST", "/api/v2/jobs", json={"workflow": unknown_node},
                                headers={"Idempotency-Key": "order-2"})
    foreign = gateway.call("POST", "/api/v2/jobs", key=BOB_KEY, json={"workflow": invert_workflow(image.id)})
    unknown_asset = gateway.call("POST", "/api/v2/jobs", json={"workflow": invert_workflow("no-such-asset")})
    # Then each gets its typed error: the missing node class named, the assets missing
    assert missing_node.status_code == 422 and missing_node.json()["error"]["code"] == "invalid_workflow"
    assert "NoSuchNodeAnywhere" in missing_node.json()["error"]["details"]["nodes"]
    for refused in (foreign, unknown_asset):
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "missing_asset", refused.text
    # and nothing was queued or indexed, so the same Idempotency-Key still submits a graph that can run
    assert queued_messages(cluster.broker_url) == 0 and gateway_records(cluster) == []
    retry = gateway.call("POST", "/api/v2/jobs", json={"workflow": invert_workflow(image.id)},
                         headers={"Idempotency-Key": "order-2"})
    assert retry.status_code == 201, retry.text
    wait_until(lambda: gateway.call("GET", f"/api/v2/jobs/{retry.json()['id']}").json()["status"] == "succeeded",
               60, "the retried job to succeed")
    assert sim.state()["prompts_received"] == 1

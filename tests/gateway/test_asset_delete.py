"""DELETE /api/v2/assets/{id} over HTTP, with the official comfy-sdk as client, against real Redis and real
storage (a folder and SeaweedFS S3, whose bucket is listed to see what is stored): reference-counted
blobs, keys kept apart, and the races of a delete with an upload or a mint of the same bytes."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_lib
from blake3 import blake3
from comfy_sdk import Comfy
from comfy_sdk.exceptions import NotFound
from PIL import Image

from gateway.auth import KeyRing, load_keys
from gateway.openapi import openapi_document
from producer import asset_blobs, assets
from producer.errors import DanceError
from tests.fixtures.workers import Cluster
from tests.gateway.asset_app import HTTP_TIMEOUT_S, ServedAssets, error_of, pattern, served_assets, upload
from tests.gateway.conftest import ALICE_KEY, BOB_KEY
from tests.support.processes import wait_until
from worker.storage import Storage, open_storage
from worker.storage.local import LocalStorage
from worker.storage.s3 import S3Storage, TransferSettings, make_client

#: The upload cap of the served app, in bytes.
MAX_UPLOAD_BYTES = 1 << 20
#: How long a test waits for a step of a race it drives, in seconds.
STEP_TIMEOUT_S = 30.0
#: How long a queued job may take to reach its end once its worker starts, in seconds.
JOB_TIMEOUT_S = 90.0
ALICE, BOB = "alice", "bob"


@pytest.fixture
def ring() -> KeyRing:
    return load_keys(None, f"{ALICE}={ALICE_KEY};{BOB}={BOB_KEY}")


@pytest.fixture
def gateway(redis: redis_lib.Redis, storage: Storage, tmp_path: Path, ring: KeyRing) -> Iterator[ServedAssets]:
    with served_assets(redis, storage, tmp_path, max_upload_bytes=MAX_UPLOAD_BYTES, keys=ring) as served:
        yield served


@pytest.fixture
def sdk_for(gateway: ServedAssets, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Comfy]]:
    """An SDK client of the gateway per key name."""
    monkeypatch.setenv("COMFY_BASE_URL", gateway.base_url)
    clients = {ALICE: Comfy(api_key=ALICE_KEY), BOB: Comfy(api_key=BOB_KEY)}
    yield clients
    for client in clients.values():
        client.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def call(gateway: ServedAssets, method: str, path: str, key: str | None = ALICE_KEY, **kwargs: Any) -> httpx.Response:
    headers = bearer(key) if key is not None else {}
    return httpx.request(method, gateway.base_url + path, headers=headers, timeout=HTTP_TIMEOUT_S, **kwargs)


def stored_keys(storage: Storage) -> list[str]:
    """Every object in the storage as the backend itself lists it: the folder's files, or the bucket's keys."""
    if isinstance(storage, LocalStorage):
        return sorted(str(path.relative_to(storage.root)) for path in storage.root.rglob("*") if path.is_file())
    assert isinstance(storage, S3Storage)
    client = make_client(TransferSettings(), os.environ)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=storage.bucket, Prefix=storage.prefix + "/")
    return sorted(item["Key"].removeprefix(storage.prefix + "/") for page in pages for item in page.get("Contents", []))


def keyspace(redis: redis_lib.Redis) -> dict[bytes, object]:
    """Every asset key with its value (a set's members as a set)."""
    return {key: redis.smembers(key) if redis.type(key) == b"set" else redis.get(key)
            for key in redis.scan_iter("dance:asset*")}


def test_deleting_the_only_asset_over_a_blob_removes_the_blob_from_storage_and_every_redis_key(
    gateway: ServedAssets, sdk_for: dict[str, Comfy], redis: redis_lib.Redis, storage: Storage
) -> None:
    # Given one asset alice uploaded
    data = pattern(3_000)
    asset_id = upload(gateway.base_url, data, headers=bearer(ALICE_KEY)).json()["id"]
    hex_digest = blake3(data).hexdigest()
    assert stored_keys(storage) == [assets.blob_key(hex_digest)]
    assert redis.smembers(assets.blob_refs_key(hex_digest)) == {asset_id.encode()}
    # When the SDK deletes it
    sdk_for[ALICE].assets.delete(asset_id)
    # Then the blob is gone from the storage itself, no asset key is left in Redis, and GET is 404
    assert stored_keys(storage) == []
    assert keyspace(redis) == {}
    for path in (f"/api/v2/assets/{asset_id}", f"/api/v2/assets/{asset_id}/content"):
        gone = call(gateway, "GET", path)
        assert (gone.status_code, error_of(gone)["code"]) == (404, "not_found"), path
    with pytest.raises(NotFound):
        sdk_for[ALICE].assets.get(asset_id)
    # and deleting it again is 404 too
    again = call(gateway, "DELETE", f"/api/v2/assets/{asset_id}")
    assert (again.status_code, error_of(again)["code"]) == (404, "not_found")


def test_a_deleted_asset_answers_204_with_no_body(gateway: ServedAssets) -> None:
    # Given an asset, When it is deleted over plain HTTP, Then the answer is 204 with an empty body
    asset_id = upload(gateway.base_url, b"short-lived", headers=bearer(ALICE_KEY)).json()["id"]
    deleted = call(gateway, "DELETE", f"/api/v2/assets/{asset_id}")
    assert (deleted.status_code, deleted.content) == (204, b"")


def test_deleting_one_of_two_keys_assets_over_one_blob_leaves_the_other_readable_and_its_hash_known(
    gateway: ServedAssets, sdk_for: dict[str, Comfy], redis: redis_lib.Redis, storage: Storage
) -> None:
    # Given the same bytes uploaded by alice and by bob: two assets over one blob
    data = pattern(40_000)
    hash_value = "blake3:" + blake3(data).hexdigest()
    alices = upload(gateway.base_url, data, headers=bearer(ALICE_KEY)).json()["id"]
    bobs = upload(gateway.base_url, data, headers=bearer(BOB_KEY)).json()["id"]
    # When alice deletes hers
    sdk_for[ALICE].assets.delete(alices)
    # Then bob's asset still serves every byte, from the one blob still stored
    assert stored_keys(storage) == [assets.blob_key(blake3(data).hexdigest())]
    content = call(gateway, "GET", f"/api/v2/assets/{bobs}/content", key=BOB_KEY, follow_redirects=True)
    assert (content.status_code, content.content) == (200, data)
    # and bob's by-hash answers, while alice, who holds no asset over the blob now, learns nothing of it
    assert call(gateway, "HEAD", f"/api/v2/assets/by-hash/{hash_value}", key=BOB_KEY).status_code == 200
    assert call(gateway, "HEAD", f"/api/v2/assets/by-hash/{hash_value}", key=ALICE_KEY).status_code == 404
    minted = call(gateway, "POST", "/api/v2/assets/from-hash", key=ALICE_KEY, json={"hash": hash_value})
    assert (minted.status_code, error_of(minted)["code"]) == (404, "blob_not_found")
    assert redis.smembers(assets.blob_refs_key(blake3(data).hexdigest())) == {bobs.encode()}


def test_an_owner_who_keeps_another_asset_over_the_blob_keeps_its_hash_after_deleting_one(
    gateway: ServedAssets, storage: Storage
) -> None:
    # Given two assets of alice over one blob (an upload, then a mint from its hash)
    data = pattern(5_000)
    hash_value = "blake3:" + blake3(data).hexdigest()
    first = upload(gateway.base_url, data, headers=bearer(ALICE_KEY)).json()["id"]
    second = call(gateway, "POST", "/api/v2/assets/from-hash", json={"hash": hash_value}).json()["id"]
    # When she deletes the first
    assert call(gateway, "DELETE", f"/api/v2/assets/{first}").status_code == 204
    # Then her hash still answers and the second still serves the bytes
    assert call(gateway, "HEAD", f"/api/v2/assets/by-hash/{hash_value}").status_code == 200
    content = call(gateway, "GET", f"/api/v2/assets/{second}/content", follow_redirects=True)
    assert (content.status_code, content.content) == (200, data)
    assert stored_keys(storage) == [assets.blob_key(blake3(data).hexdigest())]


def test_another_keys_asset_an_unknown_id_or_no_key_deletes_nothing_and_tells_nothing(
    gateway: ServedAssets, redis: redis_lib.Redis, storage: Storage
) -> None:
    # Given an asset of alice
    asset_id = upload(gateway.base_url, pattern(2_000), headers=bearer(ALICE_KEY)).json()["id"]
    before = (keyspace(redis), stored_keys(storage))
    # When bob deletes it, anyone deletes an unknown or malformed id, and a caller without a key tries
    foreign = call(gateway, "DELETE", f"/api/v2/assets/{asset_id}", key=BOB_KEY)
    unknown = call(gateway, "DELETE", "/api/v2/assets/00000000-0000-4000-8000-000000000000", key=BOB_KEY)
    malformed = call(gateway, "DELETE", "/api/v2/assets/not-a-uuid", key=BOB_KEY)
    keyless = call(gateway, "DELETE", f"/api/v2/assets/{asset_id}", key=None)
    # Then bob's answer is the very 404 an unknown id gets, the keyless one 401, and nothing changed
    for refused in (foreign, unknown, malformed):
        assert (refused.status_code, error_of(refused)["code"]) == (404, "not_found")
    assert error_of(foreign)["message"] == error_of(unknown)["message"]
    assert keyless.status_code == 401
    assert (keyspace(redis), stored_keys(storage)) == before
    assert call(gateway, "GET", f"/api/v2/assets/{asset_id}").status_code == 200


def test_a_record_that_expired_does_not_keep_its_blob_alive_when_the_last_live_one_is_deleted(
    gateway: ServedAssets, redis: redis_lib.Redis, storage: Storage
) -> None:
    # Given two assets of alice over one blob, the first of which expires by its TTL
    data = pattern(1_500)
    hex_digest = blake3(data).hexdigest()
    expiring = upload(gateway.base_url, data, headers=bearer(ALICE_KEY)).json()["id"]
    kept = upload(gateway.base_url, data, headers=bearer(ALICE_KEY)).json()["id"]
    redis.pexpire(assets.record_key(expiring), 1)
    wait_until(lambda: not redis.exists(assets.record_key(expiring)), STEP_TIMEOUT_S, "the record to expire")
    # When the live one is deleted
    assert call(gateway, "DELETE", f"/api/v2/assets/{kept}").status_code == 204
    # Then the expired id no longer counts: the blob and every asset key are gone
    assert stored_keys(storage) == []
    assert keyspace(redis) == {}
    assert not redis.exists(assets.blob_refs_key(hex_digest))


def test_an_upload_of_the_same_bytes_during_a_delete_waits_for_it_and_stores_the_blob_again(
    gateway: ServedAssets, redis: redis_lib.Redis, storage: Storage
) -> None:
    # Given an asset whose delete has run its Redis script (the blob is freed and marked) but has not
    # yet removed the blob from storage, as a delete on another gateway would be at that instant
    data = pattern(8_000)
    hex_digest = blake3(data).hexdigest()
    record = assets.load(redis, upload(gateway.base_url, data, headers=bearer(ALICE_KEY)).json()["id"])
    assert record is not None
    outcome, token = asset_blobs.unlink_record(redis, asset_blobs.BlobKeys(record.id, hex_digest), owner=ALICE,
                                               hash_value=record.hash)
    assert outcome == asset_blobs.FREED and redis.exists(asset_blobs.blob_deleting_key(hex_digest))
    # When bob uploads the same bytes meanwhile (storage still has them, so the upload puts nothing first)
    answers: list[httpx.Response] = []
    uploading = threading.Thread(target=lambda: answers.append(upload(gateway.base_url, data, headers=bearer(BOB_KEY))))
    uploading.start()
    wait_until(lambda: redis.scard(assets.blob_refs_key(hex_digest)) == 1, STEP_TIMEOUT_S, "the upload's record")
    # Then it has minted its record but not answered while the delete is under way
    assert uploading.is_alive() and not answers
    # And when the delete finishes (the blob leaves storage, the marker goes)
    storage.delete(record.key)
    asset_blobs.release_deleting(redis, hex_digest, token)
    uploading.join(STEP_TIMEOUT_S)
    # Then the upload put the blob back: bob's asset serves every byte
    assert answers and answers[0].status_code == 201, answers
    assert stored_keys(storage) == [assets.blob_key(hex_digest)]
    content = call(gateway, "GET", f"/api/v2/assets/{answers[0].json()['id']}/content", key=BOB_KEY,
                   follow_redirects=True)
    assert (content.status_code, content.content) == (200, data)


def test_a_mint_from_the_hash_that_a_delete_overtakes_mints_nothing_and_answers_none(
    redis: redis_lib.Redis, storage: Storage, tmp_path: Path
) -> None:
    # Given an asset of alice, and a mint from its hash that has read the blob's index
    path = tmp_path / "photo.png"
    path.write_bytes(pattern(4_000))
    record, _ = assets.store_file(redis, storage, path, content_type="image/png", file_path=None, owner=ALICE)
    assert assets.blob_for_hash(redis, record.hash, owner=ALICE) is not None
    # When the delete of the asset runs before the mint writes its record
    assert assets.delete(redis, storage, record.id, owner=ALICE)
    names = asset_blobs.BlobKeys("minted", record.hex_digest)
    minted = asset_blobs.mint_if_held(redis, names, owner=ALICE, record_json="{}", ttl_s=60)
    # Then the mint's write is refused and leaves no key, and a whole mint from the hash answers None
    assert minted is False
    assert keyspace(redis) == {}
    assert assets.from_hash(redis, record.hash, file_path=None, owner=ALICE) is None
    assert stored_keys(storage) == []


def test_a_workflow_naming_a_deleted_asset_is_refused_with_asset_missing(
    redis: redis_lib.Redis, storage: Storage, tmp_path: Path
) -> None:
    # Given a workflow over an asset of alice, which is then deleted
    path = tmp_path / "photo.png"
    path.write_bytes(pattern(1_000))
    record, _ = assets.store_file(redis, storage, path, content_type="image/png", file_path=None, owner=ALICE)
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": {"__type": "core/ASSET", "info": {"id": record.id}}}}}
    assets.check_refs(redis, graph, owner=ALICE)
    assert assets.delete(redis, storage, record.id, owner=ALICE)
    # When its references are checked, as the gateway does at submit and the worker before it runs a job
    # Then it is the permanent asset.missing naming the id
    with pytest.raises(DanceError) as caught:
        assets.check_refs(redis, graph, owner=ALICE)
    assert (caught.value.code, caught.value.details["asset_ids"]) == ("asset.missing", [record.id])


def test_a_workflow_job_queued_before_its_asset_was_deleted_fails_on_the_worker_with_asset_missing(
    cluster: Cluster, comfysim: Any, tmp_path: Path
) -> None:
    # Given a workflow job of alice over her asset, queued while no worker runs
    broker = redis_lib.Redis.from_url(cluster.broker_url)
    storage = open_storage(cluster.storage_url)
    path = tmp_path / "in.png"
    Image.new("RGB", (16, 12), (200, 30, 90)).save(path)
    record, _ = assets.store_file(broker, storage, path, content_type="image/png", file_path="in.png", owner=ALICE)
    reference = {"__type": "core/ASSET", "info": {"id": record.id, "file_path": "in.png"}}
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": reference}},
             "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
             "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inverted"}}}
    with cluster.client() as client:
        handle = client.submit_workflow(graph, job_id="wf-deleted-asset", owner=ALICE)
        # When the asset is deleted, and only then a worker starts and takes the job
        assert assets.delete(broker, storage, record.id, owner=ALICE)
        sim = comfysim()
        cluster.start_worker("w", sim.url, COMFYUI_INPUT_DIR=str(sim.data_dir / "input"),
                             COMFYUI_OUTPUT_DIR=str(sim.data_dir / "output"))
        with pytest.raises(DanceError) as ended:
            handle.result(timeout_s=JOB_TIMEOUT_S)
    # Then the job fails for good with asset.missing, and ComfyUI ran nothing
    assert (ended.value.code, ended.value.retryable) == ("asset.missing", False)
    assert sim.state()["runs"] == [] and not sim.state()["held"]
    broker.close()


def test_the_openapi_document_lists_the_delete_route_with_its_204_and_404() -> None:
    # Given the document, When its asset path is read, Then DELETE answers 204, 404 and 401
    operation = openapi_document()["paths"]["/api/v2/assets/{id}"]["delete"]
    assert {"204", "404", "401"} <= set(operation["responses"])

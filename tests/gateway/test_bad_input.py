"""Bad input leaves nothing behind: every refused request gets its typed v2 error (status, code, message),
and the whole Redis keyspace and the object store read exactly as before it (no queued message, job key,
index entry, asset record or blob). Against a real gateway process, real Redis and real SeaweedFS S3."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from harness.seaweed import S3Server
from producer import assets
from tests.fixtures.workers import Cluster
from tests.gateway.conftest import ALICE_KEY, BOB_KEY, Gateway, StartGateway
from tests.gateway.test_auth_limits import OLD_BODY
from tests.gateway.test_v2_submit import invert_workflow
from tests.support.jobs import queued_messages
from worker.storage import open_storage

#: Body cap of the gateway under test, in bytes: small, so an oversized body costs little.
MAX_BODY_BYTES = 4096
#: Upload cap of the gateway under test, in bytes.
MAX_ASSET_BYTES = 1024
#: A secret no gateway of these tests knows.
WRONG_KEY = "not-a-key-of-this-gateway-0123456789"


@dataclass(frozen=True)
class Refusal:
    """One bad request and the typed error it must get."""

    what: str
    method: str
    path: str
    status: int
    code: str
    key: str | None = ALICE_KEY
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Place:
    """The test's Redis database and S3 prefix, and what they hold."""

    broker: redis.Redis
    s3: S3Server
    prefix: str
    #: Where the gateway spools uploads while it hashes them.
    spool: Path

    def contents(self) -> tuple[dict[bytes, bytes | None], list[str], list[str]]:
        """Every Redis key with its serialized value, every object key under the prefix, every spooled file."""
        keys = sorted(self.broker.scan_iter(count=1000))
        values = {key: self.broker.dump(key) for key in keys}
        listed = self.s3.client().list_objects_v2(Bucket=self.s3.bucket, Prefix=f"{self.prefix}/")
        return (values, sorted(item["Key"] for item in listed.get("Contents", [])),
                sorted(path.name for path in self.spool.iterdir()))


@pytest.fixture
def place(cluster: Cluster, s3_env: S3Server, tmp_path: Path) -> Place:
    (tmp_path / "spool").mkdir()
    return Place(redis.Redis.from_url(cluster.broker_url), s3_env, f"bad-input-{uuid.uuid4().hex[:8]}",
                 tmp_path / "spool")


def s3_gateway(start_gateway: StartGateway, place: Place) -> Gateway:
    env = {k: v for k, v in place.s3.env.items() if k != "AWS_MAX_ATTEMPTS"}
    return start_gateway(DANCE_STORAGE_URL=f"s3://{place.s3.bucket}/{place.prefix}",
                         DANCE_GATEWAY_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
                         DANCE_GATEWAY_MAX_ASSET_BYTES=str(MAX_ASSET_BYTES),
                         DANCE_GATEWAY_SPOOL_DIR=str(place.spool), **env)


def alice_asset(place: Place, folder: Path) -> assets.AssetRecord:
    (folder / "in.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    storage = open_storage(f"s3://{place.s3.bucket}/{place.prefix}")
    record, _ = assets.store_file(place.broker, storage, folder / "in.png", content_type="image/png",
                                  file_path="in.png", owner="alice")
    return record


def upload(data: bytes, **fields: str) -> dict[str, Any]:
    """requests' multipart form of an asset upload, as the SDK sends one (fields, then the file)."""
    form = {"content_type": "image/png", "file_path": "photo.png", **fields}
    return {"data": form, "files": {"file": ("photo.png", data, "image/png")}}


def assert_refused_leaving_nothing(gateway: Gateway, place: Place, refusals: list[Refusal]) -> None:
    for refusal in refusals:
        before = place.contents()
        response = gateway.call(refusal.method, refusal.path, key=refusal.key, **refusal.kwargs)
        assert response.status_code == refusal.status, (refusal.what, response.status_code, response.text)
        envelope = response.json()["error"]
        assert envelope["code"] == refusal.code, (refusal.what, envelope)
        assert isinstance(envelope["message"], str) and envelope["message"].strip(), (refusal.what, envelope)
        assert place.contents() == before, f"{refusal.what} left something behind"


def test_every_refused_job_request_gets_its_typed_error_and_changes_no_key_and_no_blob(
    cluster: Cluster, place: Place, tmp_path: Path, start_gateway: StartGateway
) -> None:
    # Given a gateway on S3 storage, no worker, and one job and one image asset of alice's already there
    gateway = s3_gateway(start_gateway, place)
    image = alice_asset(place, tmp_path)
    job_id = gateway.call("POST", "/v2/ep/run", json=OLD_BODY).json()["id"]
    graph = {"workflow": invert_workflow(image.id)}
    # When bad requests of every kind arrive, one after the other
    refusals = [
        Refusal("no key", "POST", "/api/v2/jobs", 401, "unauthorized", key=None, kwargs={"json": graph}),
        Refusal("a wrong key", "POST", "/v2/ep/run", 401, "unauthorized", key=WRONG_KEY, kwargs={"json": OLD_BODY}),
        Refusal("a wrong key on a read", "GET", f"/api/v2/jobs/{job_id}", 401, "unauthorized", key=WRONG_KEY),
        Refusal("an oversized body", "POST", "/api/v2/jobs", 413, "payload_too_large",
                kwargs={"json": {**graph, "pad": "x" * MAX_BODY_BYTES}}),
        Refusal("an oversized old body", "POST", "/v2/ep/run", 413, "payload_too_large",
                kwargs={"json": {"input": {**OLD_BODY["input"], "prompt": "x" * MAX_BODY_BYTES}}}),
        Refusal("a body that is not JSON", "POST", "/api/v2/jobs", 400, "invalid_request",
                kwargs={"data": b"{nope", "headers": {"Content-Type": "application/json"}}),
        Refusal("a node without class_type", "POST", "/api/v2/jobs", 422, "invalid_workflow",
                kwargs={"json": {"workflow": {"1": {"inputs": {}}}}}),
        Refusal("a link to no node", "POST", "/api/v2/jobs", 422, "invalid_workflow",
                kwargs={"json": {"workflow": {"1": {"class_type": "ImageInvert", "inputs": {"image": ["9", 0]}}}}}),
        Refusal("a workflow that is a list", "POST", "/api/v2/jobs", 422, "invalid_workflow",
                kwargs={"json": {"workflow": [1, 2]}}),
        Refusal("an unknown asset", "POST", "/api/v2/jobs", 422, "missing_asset",
                kwargs={"json": {"workflow": invert_workflow(str(uuid.uuid4()))}}),
        Refusal("another key's asset", "POST", "/api/v2/jobs", 422, "missing_asset", key=BOB_KEY,
                kwargs={"json": graph}),
        Refusal("another key's job read", "GET", f"/api/v2/jobs/{job_id}", 404, "not_found", key=BOB_KEY),
        Refusal("another key's job cancel", "POST", f"/api/v2/jobs/{job_id}/cancel", 404, "not_found",
                key=BOB_KEY),
        Refusal("another key's job workflow", "GET", f"/api/v2/jobs/{job_id}/workflow", 404, "not_found",
                key=BOB_KEY),
        Refusal("the workflow of a dance job", "GET", f"/api/v2/jobs/{job_id}/workflow", 404, "not_found"),
        Refusal("another key's job stream", "GET", f"/api/v2/jobs/{job_id}/events", 404, "not_found", key=BOB_KEY),
        Refusal("another key's job, old API", "POST", f"/v2/ep/cancel/{job_id}", 404, "not_found", key=BOB_KEY),
        Refusal("a queue the key may not use", "POST", "/api/v2/jobs", 403, "forbidden", key=BOB_KEY,
                kwargs={"json": {**graph, "queue": "wan"}}),
    ]
    # Then each gets its status, v2 code and a message, and leaves Redis and S3 exactly as they were
    assert_refused_leaving_nothing(gateway, place, refusals)
    # and alice's job is still the one queued job, untouched by the others' cancel
    assert queued_messages(cluster.broker_url) == 1
    assert gateway.call("GET", f"/api/v2/jobs/{job_id}").json()["status"] == "queued"


def test_every_refused_asset_request_gets_its_typed_error_and_leaves_no_record_no_blob_and_no_spooled_file(
    place: Place, tmp_path: Path, start_gateway: StartGateway
) -> None:
    # Given a gateway on S3 storage that takes uploads of at most 1 KiB, and an image asset of alice's
    gateway = s3_gateway(start_gateway, place)
    image = alice_asset(place, tmp_path)
    small = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
    unknown_hash = "blake3:" + "0" * 64
    # When bad asset requests of every kind arrive, one after the other (the contract's reference proxy answers
    # a malformed upload or hash 422 invalid_request)
    refusals = [
        Refusal("an upload without a key", "POST", "/api/v2/assets", 401, "unauthorized", key=None,
                kwargs=upload(small)),
        Refusal("an upload with a wrong key", "POST", "/api/v2/assets", 401, "unauthorized", key=WRONG_KEY,
                kwargs=upload(small)),
        Refusal("a read with a wrong key", "GET", f"/api/v2/assets/{image.id}", 401, "unauthorized",
                key=WRONG_KEY),
        Refusal("an upload over the cap", "POST", "/api/v2/assets", 413, "payload_too_large",
                kwargs=upload(b"x" * (MAX_ASSET_BYTES * 4))),
        Refusal("an upload whose bytes are not the declared hash", "POST", "/api/v2/assets", 409, "hash_mismatch",
                kwargs=upload(small, expected_hash=unknown_hash)),
        Refusal("an upload declaring a malformed hash", "POST", "/api/v2/assets", 422, "invalid_request",
                kwargs=upload(small, expected_hash="md5:abc")),
        Refusal("an upload without its file part", "POST", "/api/v2/assets", 422, "invalid_request",
                kwargs={"files": {"content_type": (None, "image/png")}}),
        Refusal("an upload that is not multipart", "POST", "/api/v2/assets", 422, "invalid_request",
                kwargs={"json": {"file": "photo.png"}}),
        Refusal("a mint from a hash never stored", "POST", "/api/v2/assets/from-hash", 404, "blob_not_found",
                kwargs={"json": {"hash": unknown_hash}}),
        Refusal("a mint from a malformed hash", "POST", "/api/v2/assets/from-hash", 422, "invalid_request",
                kwargs={"json": {"hash": "nope"}}),
        Refusal("an unknown asset", "GET", f"/api/v2/assets/{uuid.uuid4()}", 404, "not_found"),
        Refusal("the bytes of an unknown asset", "GET", f"/api/v2/assets/{uuid.uuid4()}/content", 404,
                "not_found"),
        Refusal("another key's asset", "GET", f"/api/v2/assets/{image.id}", 404, "not_found", key=BOB_KEY),
        Refusal("the bytes of another key's asset", "GET", f"/api/v2/assets/{image.id}/content", 404,
                "not_found", key=BOB_KEY, kwargs={"allow_redirects": False}),
    ]
    # Then each gets its status, v2 code and a message, and leaves Redis, S3 and the spool as they were
    assert_refused_leaving_nothing(gateway, place, refusals)
    # and alice's asset is still hers, unchanged
    assert gateway.call("GET", f"/api/v2/assets/{image.id}").json()["hash"] == image.hash

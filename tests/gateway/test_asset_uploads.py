"""Uploads that fail, and uploads repeated under one Idempotency-Key, over HTTP against real Redis and
real storage (a folder and SeaweedFS S3): every refusal is a typed v2 envelope and leaves nothing behind."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis as redis_lib
from blake3 import blake3

from gateway.asset_http import UPLOAD_CHUNK_BYTES
from harness.seaweed import S3Server
from producer import assets
from tests.gateway.asset_app import (
    HTTP_TIMEOUT_S,
    ServedAssets,
    error_of,
    leftovers,
    pattern,
    served_assets,
    upload,
)
from tests.support.processes import wait_until
from worker.storage import Storage, open_storage
from worker.storage.base import CHUNK_BYTES

#: The upload cap of the served app, in bytes (small, so the cap tests send little).
MAX_UPLOAD_BYTES = 4 * CHUNK_BYTES
#: How long the gateway may take to notice a client that went away, in seconds.
DISCONNECT_TIMEOUT_S = 30.0


@pytest.fixture
def redis(redis_db: str) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_db)
    yield client
    client.close()


@pytest.fixture(params=["folder", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "folder":
        return open_storage((tmp_path / "store").as_uri())
    s3_env: S3Server = request.getfixturevalue("s3_env")
    return open_storage(f"s3://{s3_env.bucket}/gw-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def gateway(redis: redis_lib.Redis, storage: Storage, tmp_path: Path) -> Iterator[ServedAssets]:
    with served_assets(redis, storage, tmp_path, max_upload_bytes=MAX_UPLOAD_BYTES) as served:
        yield served


@pytest.fixture
def folder_gateway(redis: redis_lib.Redis, tmp_path: Path) -> Iterator[ServedAssets]:
    storage = open_storage((tmp_path / "store").as_uri())
    with served_assets(redis, storage, tmp_path, max_upload_bytes=MAX_UPLOAD_BYTES) as served:
        yield served


def test_an_upload_whose_declared_hash_differs_answers_409_hash_mismatch_and_leaves_nothing(
    gateway: ServedAssets, redis: redis_lib.Redis, storage: Storage
) -> None:
    # Given bytes and a declared hash of other bytes
    data = pattern(30_000)
    declared = "blake3:" + blake3(b"other").hexdigest()
    # When they are uploaded
    response = upload(gateway.base_url, data, fields={"expected_hash": declared})
    # Then the answer is 409 hash_mismatch, and no record, blob or temporary file is left
    assert response.status_code == 409
    assert error_of(response)["code"] == "hash_mismatch"
    assert leftovers(redis, gateway) == ([], [])
    assert not storage.exists(assets.blob_key(blake3(data).hexdigest()))


def test_an_upload_with_the_right_declared_hash_is_accepted(gateway: ServedAssets) -> None:
    # Given bytes and their own blake3, in upper case
    data = pattern(5_000)
    declared = "blake3:" + blake3(data).hexdigest().upper()
    # When they are uploaded, Then the upload is accepted
    assert upload(gateway.base_url, data, fields={"expected_hash": declared}).status_code == 201


def test_an_upload_streamed_past_the_size_cap_answers_413_and_leaves_nothing(
    gateway: ServedAssets, redis: redis_lib.Redis
) -> None:
    # Given a chunked body (no Content-Length) one chunk past the cap
    boundary = "cap-boundary"

    def body() -> Iterator[bytes]:
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n').encode()
        for _ in range(MAX_UPLOAD_BYTES // UPLOAD_CHUNK_BYTES + 1):
            yield b"x" * UPLOAD_CHUNK_BYTES
        yield f"\r\n--{boundary}--\r\n".encode()

    # When it is posted
    response = httpx.post(
        f"{gateway.base_url}/api/v2/assets", content=body(), timeout=HTTP_TIMEOUT_S,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    # Then the answer is 413 payload_too_large naming the cap, and nothing is left
    assert response.status_code == 413
    assert error_of(response)["details"]["max_bytes"] == MAX_UPLOAD_BYTES
    assert leftovers(redis, gateway) == ([], [])


def test_an_upload_declaring_a_length_past_the_cap_is_refused_before_its_body_is_read(
    gateway: ServedAssets, redis: redis_lib.Redis
) -> None:
    # Given a request whose Content-Length is far past the cap, of which only the head is sent
    with socket.create_connection(("127.0.0.1", int(gateway.base_url.rsplit(":", 1)[1])), HTTP_TIMEOUT_S) as conn:
        conn.sendall(
            b"POST /api/v2/assets HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {MAX_UPLOAD_BYTES * 10}\r\n\r\n".encode()
        )
        # When the gateway answers, Then it is 413 at once, and nothing is left
        answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"payload_too_large"' in answer
    assert leftovers(redis, gateway) == ([], [])


def test_a_client_that_disconnects_mid_upload_leaves_no_temporary_file_blob_or_record(
    gateway: ServedAssets, redis: redis_lib.Redis
) -> None:
    # Given an upload whose first megabyte has reached the gateway's spool
    port = int(gateway.base_url.rsplit(":", 1)[1])
    conn = socket.create_connection(("127.0.0.1", port), HTTP_TIMEOUT_S)
    conn.sendall(
        b"POST /api/v2/assets HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        + f"Content-Length: {MAX_UPLOAD_BYTES}\r\n\r\n".encode()
        + b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
        + b"y" * CHUNK_BYTES
    )
    wait_until(
        lambda: any(path.stat().st_size > 0 for path in gateway.spool_dir.iterdir()), DISCONNECT_TIMEOUT_S,
        "the upload's first bytes in the spool folder",
    )
    # When the client goes away before the rest
    conn.close()
    # Then the spooled file goes, and no record or blob index was written
    wait_until(lambda: not any(gateway.spool_dir.iterdir()), DISCONNECT_TIMEOUT_S, "an empty spool folder")
    assert leftovers(redis, gateway) == ([], [])


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"file": "x"}'),
        ("multipart/form-data; boundary=b",
         b'--b\r\nContent-Disposition: form-data; name="file_path"\r\n\r\nx\r\n--b--\r\n'),
        ("multipart/form-data; boundary=b",
         b'--b\r\nContent-Disposition: form-data; name="tags"\r\n\r\nred\r\n'
         b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\nabc\r\n--b--\r\n'),
        ("multipart/form-data; boundary=b",
         b'--b\r\nContent-Disposition: form-data; name="expected_hash"\r\n\r\nsha256:00\r\n'
         b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\nabc\r\n--b--\r\n'),
        ("multipart/form-data; boundary=b",
         b'--b\r\nContent-Disposition: form-data; name="content_type"\r\n\r\nnot a type\r\n'
         b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\nabc\r\n--b--\r\n'),
        ("multipart/form-data; boundary=b", b"--b\r\nthis is not a part\r\n"),
    ],
    ids=["not-multipart", "no-file-part", "tags-unsupported", "bad-expected-hash", "bad-content-type", "garbled"],
)
def test_a_malformed_upload_answers_422_invalid_request_and_leaves_nothing(
    folder_gateway: ServedAssets, redis: redis_lib.Redis, content_type: str, body: bytes
) -> None:
    # Given a malformed upload, When it is posted
    response = httpx.post(
        f"{folder_gateway.base_url}/api/v2/assets", content=body, headers={"Content-Type": content_type},
        timeout=HTTP_TIMEOUT_S,
    )
    # Then it is refused as invalid_request, and nothing is left
    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == "invalid_request"
    assert leftovers(redis, folder_gateway) == ([], [])


def test_an_upload_repeated_under_its_idempotency_key_answers_the_first_asset_again(
    folder_gateway: ServedAssets, redis: redis_lib.Redis
) -> None:
    # Given an upload made under an Idempotency-Key
    data = pattern(4_000)
    headers = {"Idempotency-Key": "handle-1"}
    url = f"{folder_gateway.base_url}/api/v2/assets"
    first = httpx.post(url, files={"file": ("a.png", data, "image/png")}, headers=headers, timeout=HTTP_TIMEOUT_S)
    # When the same bytes are posted again under the same key
    again = httpx.post(url, files={"file": ("a.png", data, "image/png")}, headers=headers, timeout=HTTP_TIMEOUT_S)
    # Then the answer is the first one, same asset and status, and no second record was minted
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["id"] == first.json()["id"] and again.json()["created_new"] is True
    assert len(list(redis.scan_iter("dance:asset:*"))) == 1


def test_an_idempotency_key_reused_for_other_bytes_answers_422_and_stores_nothing_more(
    folder_gateway: ServedAssets, redis: redis_lib.Redis
) -> None:
    # Given an upload made under an Idempotency-Key
    headers = {"Idempotency-Key": "handle-2"}
    url = f"{folder_gateway.base_url}/api/v2/assets"
    httpx.post(url, files={"file": ("a.png", b"first", "image/png")}, headers=headers, timeout=HTTP_TIMEOUT_S)
    before = sorted(redis.scan_iter("dance:asset*"))
    # When other bytes are posted under the same key
    other = httpx.post(url, files={"file": ("b.png", b"second", "image/png")}, headers=headers, timeout=HTTP_TIMEOUT_S)
    # Then it is refused as idempotency_key_reuse, and Redis holds what it held
    assert (other.status_code, error_of(other)["code"]) == (422, "idempotency_key_reuse")
    assert sorted(redis.scan_iter("dance:asset*")) == before


def test_an_upload_the_storage_refuses_answers_an_envelope_and_leaves_no_record_or_file(
    redis: redis_lib.Redis, s3_env: S3Server, tmp_path: Path
) -> None:
    # Given the asset routes over an S3 bucket that does not exist
    missing = open_storage(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/assets")
    with served_assets(redis, missing, tmp_path, max_upload_bytes=MAX_UPLOAD_BYTES) as served:
        # When bytes are uploaded
        response = upload(served.base_url, pattern(2_000))
        # Then the answer is a v2 envelope naming the storage error, and nothing is left
        assert response.status_code == 500
        assert error_of(response)["details"]["dance_code"] == "storage.forbidden"
        assert leftovers(redis, served) == ([], [])

"""The v2 asset routes over HTTP, with the official comfy-sdk as client where it has a call, against real
Redis and real storage (a folder and SeaweedFS S3)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis as redis_lib
from blake3 import blake3
from comfy_low.models import Asset as V2Asset
from comfy_low.transport import ComfyLow
from comfy_sdk import Comfy

from gateway.asset_http import UPLOAD_CHUNK_BYTES
from harness.seaweed import S3Server
from producer import assets
from tests.fixtures.asset_storage import PRESIGN_EXPIRES_S
from tests.gateway.asset_app import HTTP_TIMEOUT_S, ServedAssets, error_of, pattern, served_assets, upload
from worker.storage import Storage, open_storage
from worker.storage.base import CHUNK_BYTES

#: The upload cap of the served app, in bytes (small, so the cap tests send little).
MAX_UPLOAD_BYTES = 4 * CHUNK_BYTES
#: A body several upload chunks and storage chunks long, with an odd tail, in bytes.
MULTI_CHUNK_BYTES = 2 * CHUNK_BYTES + 3 * UPLOAD_CHUNK_BYTES + 11
#: How long the gateway may take to notice a client that went away, in seconds.
DISCONNECT_TIMEOUT_S = 30.0
#: Read cap for stored blobs, in bytes.
READ_CAP_BYTES = 64 << 20



def serve(redis: redis_lib.Redis, storage: Storage, tmp_path: Path) -> Iterator[ServedAssets]:
    with served_assets(redis, storage, tmp_path, max_upload_bytes=MAX_UPLOAD_BYTES) as served:
        yield served


@pytest.fixture
def gateway(redis: redis_lib.Redis, storage: Storage, tmp_path: Path) -> Iterator[ServedAssets]:
    yield from serve(redis, storage, tmp_path)


@pytest.fixture
def folder_gateway(redis: redis_lib.Redis, folder_storage: Storage, tmp_path: Path) -> Iterator[ServedAssets]:
    yield from serve(redis, folder_storage, tmp_path)


@pytest.fixture
def sdk(gateway: ServedAssets, monkeypatch: pytest.MonkeyPatch) -> Iterator[Comfy]:
    monkeypatch.setenv("COMFY_BASE_URL", gateway.base_url)
    monkeypatch.delenv("COMFY_API_KEY", raising=False)
    with Comfy() as client:
        yield client


@pytest.fixture
def low(gateway: ServedAssets) -> Iterator[ComfyLow]:
    client = ComfyLow(gateway.base_url)
    yield client
    client.close()





def test_the_sdk_uploads_a_file_and_gets_a_v2_asset_with_the_servers_blake3(
    sdk: Comfy, low: ComfyLow, tmp_path: Path, storage: Storage
) -> None:
    # Given an image file
    image = tmp_path / "photo.png"
    image.write_bytes(pattern(50_000))
    # When the SDK commits it
    handle = sdk.assets.from_file(image)
    asset_id = handle.commit()
    # Then the server made a new asset whose hash is the file's blake3, and its blob holds the bytes
    described = low.get_asset(asset_id)
    digest = blake3(image.read_bytes()).hexdigest()
    assert handle.created_new is True
    assert described.hash == f"blake3:{digest}"
    assert (described.size_bytes, described.content_type, described.file_path) == (50_000, "image/png", "photo.png")
    assert described.job_id is None and described.expires_at is not None
    assert storage.read_bytes(assets.blob_key(digest), READ_CAP_BYTES) == image.read_bytes()
    # And the SDK's core/ASSET reference to it names it for the asset store
    reference = handle.as_reference()
    assert assets.asset_ref_id(reference) == asset_id
    assert assets.refs_in({"1": {"class_type": "LoadImage", "inputs": {"image": reference}}}) == [
        ("1", "image", asset_id),
    ]


def test_the_sdk_committing_the_same_bytes_again_mints_from_the_hash_and_stores_no_second_blob(
    sdk: Comfy, tmp_path: Path, redis: redis_lib.Redis
) -> None:
    # Given bytes the SDK already uploaded
    image = tmp_path / "photo.png"
    image.write_bytes(pattern(20_000))
    first = sdk.assets.from_file(image).commit()
    # When another handle over the same bytes commits (HEAD by-hash, then from-hash)
    again = sdk.assets.from_file(image)
    second = again.commit()
    # Then it is a second asset over the one blob, reported as not new
    assert second != first
    assert again.created_new is False
    assert len(list(redis.scan_iter("dance:asset-blob:*"))) == 1
    first_record, second_record = assets.load(redis, first), assets.load(redis, second)
    assert first_record is not None and second_record is not None
    assert first_record.key == second_record.key


def test_a_multipart_upload_of_known_bytes_answers_200_with_created_new_false(gateway: ServedAssets) -> None:
    # Given bytes uploaded once
    data = pattern(10_000)
    first = upload(gateway.base_url, data)
    # When the same bytes are uploaded in full again
    second = upload(gateway.base_url, data, filename="b.png")
    # Then the first answer is 201 and new, the second 200 and a dedup hit, each a valid v2 Asset
    assert (first.status_code, second.status_code) == (201, 200)
    assert (V2Asset.model_validate(first.json()).created_new, V2Asset.model_validate(second.json()).created_new) == (
        True, False,
    )
    assert first.json()["hash"] == second.json()["hash"] and first.json()["id"] != second.json()["id"]


def test_an_upload_many_chunks_long_is_streamed_to_storage_whole(gateway: ServedAssets, low: ComfyLow) -> None:
    # Given a body longer than several upload and storage chunks, sent chunked (no Content-Length)
    data = pattern(MULTI_CHUNK_BYTES)
    boundary = "dance-test-boundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        for start in range(0, len(data), 100_000):
            yield data[start : start + 100_000]
        yield tail

    # When it is posted
    response = httpx.post(
        f"{gateway.base_url}/api/v2/assets", content=body(), timeout=HTTP_TIMEOUT_S,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    # Then the asset has every byte, its blake3, and the part's name and type
    assert response.status_code == 201, response.text
    asset = response.json()
    assert (asset["size_bytes"], asset["hash"]) == (MULTI_CHUNK_BYTES, "blake3:" + blake3(data).hexdigest())
    assert (asset["file_path"], asset["content_type"]) == ("big.bin", "application/octet-stream")
    with low.get_asset_content(asset["id"]) as content:
        assert content.read() == data








def test_minting_from_an_unknown_or_malformed_hash_is_refused_with_its_typed_error(gateway: ServedAssets) -> None:
    # Given no uploads, When a mint names an unknown hash, a malformed one, or a field we do not keep
    url = f"{gateway.base_url}/api/v2/assets/from-hash"
    unknown = httpx.post(url, json={"hash": "blake3:" + "a" * 64}, timeout=HTTP_TIMEOUT_S)
    malformed = httpx.post(url, json={"hash": "md5:abc"}, timeout=HTTP_TIMEOUT_S)
    tagged = httpx.post(url, json={"hash": "blake3:" + "a" * 64, "tags": ["x"]}, timeout=HTTP_TIMEOUT_S)
    # Then they answer 404 blob_not_found and 422 invalid_request
    assert (unknown.status_code, error_of(unknown)["code"]) == (404, "blob_not_found")
    assert (malformed.status_code, error_of(malformed)["code"]) == (422, "invalid_request")
    assert (tagged.status_code, error_of(tagged)["code"]) == (422, "invalid_request")


def test_the_hash_probe_answers_200_for_uploaded_bytes_and_404_for_unknown_ones(
    gateway: ServedAssets, low: ComfyLow
) -> None:
    # Given uploaded bytes
    data = pattern(1_000)
    upload(gateway.base_url, data)
    # When their hash and another are probed, Then only theirs is known
    assert low.head_asset_by_hash("blake3:" + blake3(data).hexdigest()) is True
    assert low.head_asset_by_hash("blake3:" + blake3(b"never").hexdigest()) is False


def test_another_owners_asset_and_its_hash_look_like_nothing_to_the_caller(
    gateway: ServedAssets, redis: redis_lib.Redis, storage: Storage, tmp_path: Path
) -> None:
    # Given an asset that owner k1 stored (the keyless caller is owner "")
    path = tmp_path / "private.png"
    path.write_bytes(b"k1 only")
    record, _ = assets.store_file(redis, storage, path, content_type="image/png", file_path=None, owner="k1")
    base = gateway.base_url
    # When the caller asks for it, its bytes, its hash and a mint from the hash
    described = httpx.get(f"{base}/api/v2/assets/{record.id}", timeout=HTTP_TIMEOUT_S)
    content = httpx.get(f"{base}/api/v2/assets/{record.id}/content", timeout=HTTP_TIMEOUT_S)
    probed = httpx.head(f"{base}/api/v2/assets/by-hash/{record.hash}", timeout=HTTP_TIMEOUT_S)
    minted = httpx.post(f"{base}/api/v2/assets/from-hash", json={"hash": record.hash}, timeout=HTTP_TIMEOUT_S)
    # Then each answers as if there were nothing
    assert (described.status_code, error_of(described)["code"]) == (404, "not_found")
    assert (content.status_code, error_of(content)["code"]) == (404, "not_found")
    assert probed.status_code == 404
    assert (minted.status_code, error_of(minted)["code"]) == (404, "blob_not_found")


def test_describing_an_asset_gives_the_v2_json_with_a_working_content_url(
    gateway: ServedAssets, low: ComfyLow, storage: Storage
) -> None:
    # Given an uploaded asset
    data = pattern(2_000)
    asset_id = upload(gateway.base_url, data).json()["id"]
    # When it is described
    described = low.get_asset(asset_id)
    # Then its url serves the bytes until url_expires_at: a presigned URL for S3, the content route otherwise
    url = str(described.url)
    assert described.created_new is None and described.url_expires_at > described.created_at
    if url.startswith(gateway.base_url):
        assert url == f"{gateway.base_url}/api/v2/assets/{asset_id}/content"
        assert described.url_expires_at == described.expires_at
    else:
        assert "X-Amz-Signature=" in url
        lifetime_s = (described.url_expires_at - described.created_at).total_seconds()
        assert PRESIGN_EXPIRES_S - 60 < lifetime_s <= PRESIGN_EXPIRES_S + 60
    assert httpx.get(url, timeout=HTTP_TIMEOUT_S).content == data


def test_content_is_served_with_ranges_and_a_range_past_the_end_answers_416(
    gateway: ServedAssets, low: ComfyLow
) -> None:
    # Given an uploaded asset of 1000 bytes
    data = pattern(1_000)
    asset_id = upload(gateway.base_url, data).json()["id"]
    # When its content is fetched whole, in a range and as a suffix (the SDK follows S3's redirect)
    with low.get_asset_content(asset_id) as whole:
        assert (whole.status_code, whole.read(), whole.headers["Content-Type"]) == (200, data, "image/png")
    with low.get_asset_content(asset_id, range=(10, 19)) as part:
        assert (part.status_code, part.read(), part.headers["Content-Range"]) == (206, data[10:20], "bytes 10-19/1000")
    suffix = httpx.get(f"{gateway.base_url}/api/v2/assets/{asset_id}/content", headers={"Range": "bytes=-5"},
                       follow_redirects=True, timeout=HTTP_TIMEOUT_S)
    assert (suffix.status_code, suffix.content) == (206, data[-5:])
    # Then a range past the end answers 416 with the size
    past = httpx.get(f"{gateway.base_url}/api/v2/assets/{asset_id}/content", headers={"Range": "bytes=5000-"},
                     follow_redirects=True, timeout=HTTP_TIMEOUT_S)
    assert past.status_code == 416
    assert past.headers["Content-Range"] == "bytes */1000"


def test_a_folder_asset_answers_416_with_a_v2_envelope_for_a_range_it_cannot_serve(
    folder_gateway: ServedAssets
) -> None:
    # Given an uploaded asset in a storage folder
    asset_id = upload(folder_gateway.base_url, pattern(100)).json()["id"]
    url = f"{folder_gateway.base_url}/api/v2/assets/{asset_id}/content"
    # When ranges past the end, several ranges, or a garbled one are asked for
    for header in ("bytes=100-", "bytes=0-1,5-6", "bytes=zz"):
        response = httpx.get(url, headers={"Range": header}, timeout=HTTP_TIMEOUT_S)
        # Then each answers 416 range_not_satisfiable with the size
        assert response.status_code == 416, header
        assert error_of(response)["code"] == "range_not_satisfiable"
        assert response.headers["Content-Range"] == "bytes */100"


def test_s3_content_redirects_with_307_to_a_presigned_url(
    redis: redis_lib.Redis, s3_env: S3Server, tmp_path: Path
) -> None:
    # Given an asset in S3 storage
    storage = open_storage(f"s3://{s3_env.bucket}/gw-{uuid.uuid4().hex[:8]}")
    for served in serve(redis, storage, tmp_path):
        asset_id = upload(served.base_url, b"s3 bytes").json()["id"]
        # When its content is asked for without following redirects
        response = httpx.get(f"{served.base_url}/api/v2/assets/{asset_id}/content", timeout=HTTP_TIMEOUT_S)
        # Then it is a 307 to a presigned URL of the blob, which the SDK reports as the content URL
        assert response.status_code == 307
        location = response.headers["Location"]
        assert "X-Amz-Signature=" in location and assets.BLOB_FOLDER in location
        assert httpx.get(location, timeout=HTTP_TIMEOUT_S).content == b"s3 bytes"
        with ComfyLow(served.base_url) as client:
            reported = client.get_asset_content_url(asset_id)[0]
        # (each answer is presigned anew: two a second apart differ in their date and signature)
        assert reported.split("?")[0] == location.split("?")[0]
        assert httpx.get(reported, timeout=HTTP_TIMEOUT_S).content == b"s3 bytes"


def test_an_unknown_asset_id_answers_404_not_found(gateway: ServedAssets) -> None:
    # Given no assets, When an unknown and a malformed id are described, Then both are 404 not_found
    for asset_id in (str(uuid.uuid4()), "not-a-uuid", str(uuid.uuid4()).upper()):
        response = httpx.get(f"{gateway.base_url}/api/v2/assets/{asset_id}", timeout=HTTP_TIMEOUT_S)
        assert (response.status_code, error_of(response)["code"]) == (404, "not_found")

"""Storage in S3, against a real SeaweedFS server with authentication: uploads, URLs and refusals."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest
import requests

from harness.seaweed import S3Server
from producer.errors import DanceError
from tests.fixtures.media_server import GeneratorStream, MediaServer, Route, patterned, patterned_chunks
from tests.support.processes import free_port
from worker.storage import Storage, open_storage
from worker.storage.s3 import TransferSettings

#: Multipart threshold of these tests, in bytes: small, so a few MiB already go in parts.
SMALL_THRESHOLD_BYTES = 1 << 20
#: Smallest part S3 (and boto3) accepts, in bytes; the tests cut parts this small.
PART_BYTES = 5 << 20
#: Body size that becomes two parts.
TWO_PART_BYTES = 6 << 20
#: Read cap for the small objects of these tests, in bytes.
READ_CAP_BYTES = 1 << 20


@pytest.fixture
def s3_storage(s3_env: S3Server) -> Storage:
    prefix = f"results-{uuid.uuid4().hex[:8]}"
    transfer = TransferSettings(
        multipart_threshold_bytes=SMALL_THRESHOLD_BYTES, multipart_chunk_bytes=PART_BYTES
    )
    return open_storage(f"s3://{s3_env.bucket}/{prefix}", presign_expires_s=600, transfer=transfer)


def test_a_video_uploaded_to_s3_has_a_presigned_url_that_serves_the_same_bytes(
    s3_storage: Storage, tmp_path: Path, s3_env: S3Server
) -> None:
    # Given a video file
    video = tmp_path / "dance.mp4"
    video.write_bytes(patterned(300_000))
    # When it is stored
    stored = s3_storage.put_file("job-a/dance.mp4", video, "video/mp4")
    # Then its presigned URL serves the same bytes with the content type, and the URI names the object
    response = requests.get(stored.url, timeout=10)
    assert response.status_code == 200
    assert response.content == video.read_bytes()
    assert response.headers["Content-Type"] == "video/mp4"
    assert "X-Amz-Signature=" in stored.url
    assert stored.uri.startswith(f"s3://{s3_env.bucket}/results-") and stored.uri.endswith("/job-a/dance.mp4")
    assert stored.sha256 == hashlib.sha256(video.read_bytes()).hexdigest()


def test_an_unsigned_request_for_an_s3_object_is_refused(s3_storage: Storage, s3_env: S3Server) -> None:
    # Given a stored object, When it is fetched without the presigned query, Then the server refuses it
    stored = s3_storage.put_bytes("job-b/secret.json", b"{}", "application/json")
    response = requests.get(stored.url.split("?", 1)[0], timeout=10)
    assert response.status_code == 403


def test_a_file_above_the_multipart_threshold_is_uploaded_to_s3_in_parts(
    s3_storage: Storage, s3_env: S3Server, tmp_path: Path
) -> None:
    # Given a file larger than the (small) multipart threshold
    big = tmp_path / "big.mp4"
    big.write_bytes(patterned(TWO_PART_BYTES))
    # When it is stored
    stored = s3_storage.put_file("job-c/big.mp4", big, "video/mp4")
    # Then S3 holds one object made of two parts (a multipart ETag ends in -<parts>), byte for byte
    bucket, key = stored.uri.removeprefix("s3://").split("/", 1)
    head = s3_env.client().head_object(Bucket=bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-2")
    assert requests.get(stored.url, timeout=30).content == big.read_bytes()


def test_a_non_seekable_stream_goes_to_s3_in_parts_hashed_on_the_fly(
    s3_storage: Storage, s3_env: S3Server
) -> None:
    # Given a generator-backed stream that cannot seek
    stream = GeneratorStream(patterned_chunks(TWO_PART_BYTES))
    # When it is stored
    stored = s3_storage.put_stream("job-d/stream.bin", stream, "application/octet-stream")
    # Then the hash and size were computed while streaming and the object matches in two parts
    body = patterned(TWO_PART_BYTES)
    assert (stored.bytes, stored.sha256) == (len(body), hashlib.sha256(body).hexdigest())
    bucket, key = stored.uri.removeprefix("s3://").split("/", 1)
    assert s3_env.client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"').endswith("-2")
    assert requests.get(stored.url, timeout=30).content == body


def test_small_objects_round_trip_through_s3(s3_storage: Storage) -> None:
    stored = s3_storage.put_bytes("job-e/manifest.json", b'{"ok": true}', "application/json")
    assert s3_storage.exists("job-e/manifest.json")
    assert not s3_storage.exists("job-e/other.json")
    assert s3_storage.read_bytes("job-e/manifest.json", READ_CAP_BYTES) == b'{"ok": true}'
    assert stored.sha256 == hashlib.sha256(b'{"ok": true}').hexdigest()
    with pytest.raises(DanceError) as missing:
        s3_storage.read_bytes("job-e/other.json", READ_CAP_BYTES)
    with pytest.raises(DanceError) as oversized:
        s3_storage.read_bytes("job-e/manifest.json", 5)
    assert (missing.value.code, oversized.value.code) == ("storage.not_found", "storage.too_large")


def test_delete_prefix_on_s3_removes_one_jobs_objects_only(s3_storage: Storage) -> None:
    for key in ("job1/a", "job1/b/c", "job10/d"):
        s3_storage.put_bytes(key, b"x", "text/plain")
    assert s3_storage.delete_prefix("job1") == 2
    assert not s3_storage.exists("job1/a")
    assert s3_storage.exists("job10/d")


def test_wrong_s3_credentials_are_refused_as_storage_forbidden(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given the right key id with the wrong secret
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    storage = open_storage(f"s3://{s3_env.bucket}/wrong-creds")
    # When anything is tried, Then it is refused, permanently
    for attempt in (
        lambda: storage.put_bytes("job/x.json", b"{}", "application/json"),
        lambda: storage.exists("job/x.json"),
        storage.check,
    ):
        with pytest.raises(DanceError) as excinfo:
            attempt()
        assert excinfo.value.code == "storage.forbidden"
        assert not excinfo.value.retryable
        assert "not-the-secret" not in repr(excinfo.value.as_dict())
    # And an input download with them is refused with the input code
    with pytest.raises(DanceError) as excinfo:
        storage.download(storage.uri_for("job/x.json"), tmp_path / "x.json", READ_CAP_BYTES)
    assert excinfo.value.code == "input.forbidden"


def test_a_missing_bucket_is_reported_as_storage_forbidden(s3_env: S3Server) -> None:
    storage = open_storage("s3://no-such-bucket-here/prefix")
    for attempt in (
        lambda: storage.put_bytes("job/x.json", b"{}", "application/json"),
        lambda: storage.exists("job/x.json"),
        storage.check,
    ):
        with pytest.raises(DanceError) as excinfo:
            attempt()
        assert excinfo.value.code == "storage.forbidden"


def test_an_s3_endpoint_that_refuses_connections_is_storage_unavailable(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    storage = open_storage(f"s3://{s3_env.bucket}/down")
    with pytest.raises(DanceError) as excinfo:
        storage.put_bytes("job/x.json", b"{}", "application/json")
    assert excinfo.value.code == "storage.unavailable"
    assert excinfo.value.retryable


def test_an_s3_endpoint_that_throttles_is_storage_unavailable(
    s3_env: S3Server, media_server: MediaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an endpoint that answers 503 SlowDown, as S3 does when throttling
    slow_down = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
    media_server.route(
        f"/{s3_env.bucket}/throttled/job/manifest.json",
        Route(body=slow_down, status=503, content_type="application/xml"),
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", media_server.base_url)
    storage = open_storage(f"s3://{s3_env.bucket}/throttled")
    # When an object is read, Then the failure is retryable
    with pytest.raises(DanceError) as excinfo:
        storage.read_bytes("job/manifest.json", READ_CAP_BYTES)
    assert (excinfo.value.code, excinfo.value.details["s3_code"]) == ("storage.unavailable", "SlowDown")
    assert excinfo.value.retryable


def test_an_endpoint_named_by_host_name_is_addressed_path_style(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the endpoint under the name "localhost", where bucket.localhost would not resolve
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint_url.replace("127.0.0.1", "localhost"))
    storage = open_storage(f"s3://{s3_env.bucket}/by-name")
    # When an object is stored and fetched by its presigned URL, Then both work
    stored = storage.put_bytes("job/x.txt", b"hello", "text/plain")
    assert stored.url.startswith(f"http://localhost:{s3_env.endpoint_url.rsplit(':', 1)[1]}/{s3_env.bucket}/")
    assert requests.get(stored.url, timeout=10).content == b"hello"


def test_s3_downloads_map_refusals_to_input_codes(
    s3_storage: Storage, s3_env: S3Server, tmp_path: Path
) -> None:
    # Given an input the producer uploaded
    stored = s3_storage.put_bytes("job-f/inputs/reference.png", b"png" * 100, "image/png")
    # When it and others are downloaded
    assert s3_storage.download(stored.uri, tmp_path / "ok.png", READ_CAP_BYTES) == 300
    cases = [
        (stored.uri.replace("reference.png", "missing.png"), READ_CAP_BYTES, "input.not_found"),
        (stored.uri, 299, "input.too_large"),
        (f"s3://other-bucket/{stored.uri.split('/', 3)[3]}", READ_CAP_BYTES, "input.forbidden"),
        (f"s3://{s3_env.bucket}/outside-prefix/x.png", READ_CAP_BYTES, "input.forbidden"),
        ("file:///etc/passwd", READ_CAP_BYTES, "input.scheme_unsupported"),
    ]
    # Then the owned one arrives, and the others fail with input codes and leave no file
    for uri, cap, code in cases:
        with pytest.raises(DanceError) as excinfo:
            s3_storage.download(uri, tmp_path / "bad.png", cap)
        assert excinfo.value.code == code, uri
        assert not (tmp_path / "bad.png").exists()

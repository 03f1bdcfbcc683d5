"""Storage in a local folder (the embedded default): atomic writes, hashing, and no way out of the root."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.errors import DanceError
from tests.fixtures.media_server import GeneratorStream, patterned, patterned_chunks
from worker.storage import LocalStorage, open_storage

#: Read cap for the small objects of these tests, in bytes.
READ_CAP_BYTES = 1 << 20


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    storage = open_storage((tmp_path / "store").as_uri())
    assert isinstance(storage, LocalStorage)
    storage.check()
    return storage


def test_a_file_put_into_local_storage_reads_back_with_its_size_and_sha256(
    local: LocalStorage, tmp_path: Path
) -> None:
    # Given a file
    source = tmp_path / "clip.mp4"
    source.write_bytes(b"video bytes" * 100)
    # When it is stored under a job's key
    stored = local.put_file("job-1/clip.mp4", source, "video/mp4")
    # Then the object reads back the same, and its URI is a file URI inside the root
    assert stored.bytes == 1100
    assert stored.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert stored.uri == stored.url == (local.root / "job-1" / "clip.mp4").as_uri()
    assert local.exists("job-1/clip.mp4")
    assert local.read_bytes("job-1/clip.mp4", READ_CAP_BYTES) == source.read_bytes()
    assert local.owns(stored.uri)


def test_a_stream_put_into_local_storage_is_hashed_while_it_streams(local: LocalStorage) -> None:
    # Given a non-seekable stream of 3 MiB
    body = patterned(3 << 20)
    # When it is stored
    stored = local.put_stream("job-2/out.bin", GeneratorStream(patterned_chunks(len(body))), "application/x")
    # Then size and hash match the body
    assert (stored.bytes, stored.sha256) == (len(body), hashlib.sha256(body).hexdigest())
    assert (local.root / "job-2" / "out.bin").read_bytes() == body


def test_a_reader_never_sees_half_a_local_file_while_it_is_written(local: LocalStorage) -> None:
    # Given an object with old content and a writer that pauses halfway through the new content
    local.put_bytes("job-3/manifest.json", b"old", "application/json")
    halfway, resume = threading.Event(), threading.Event()

    def chunks() -> Iterator[bytes]:
        yield b"new-first-half;"
        halfway.set()
        resume.wait(10)
        yield b"new-second-half"

    writer = threading.Thread(
        target=local.put_stream, args=("job-3/manifest.json", GeneratorStream(chunks()), "application/json")
    )
    writer.start()
    try:
        # When a reader looks while the writer is halfway
        assert halfway.wait(10)
        seen_mid_write = local.read_bytes("job-3/manifest.json", READ_CAP_BYTES)
    finally:
        resume.set()
        writer.join(10)
    # Then it saw the old content, and afterwards the whole new content, with no temp file left
    assert seen_mid_write == b"old"
    assert local.read_bytes("job-3/manifest.json", READ_CAP_BYTES) == b"new-first-half;new-second-half"
    assert sorted(p.name for p in (local.root / "job-3").iterdir()) == ["manifest.json"]


def test_a_write_that_fails_midway_leaves_the_old_local_file_and_no_temp_file(local: LocalStorage) -> None:
    # Given an object and a stream that breaks after its first chunk
    local.put_bytes("job-4/video.mp4", b"complete", "video/mp4")

    def chunks() -> Iterator[bytes]:
        yield b"partial"
        raise ConnectionResetError("the source went away")

    # When it is written over the object
    with pytest.raises(ConnectionResetError):
        local.put_stream("job-4/video.mp4", GeneratorStream(chunks()), "video/mp4")
    # Then the old object is intact and nothing else is in the folder
    assert local.read_bytes("job-4/video.mp4", READ_CAP_BYTES) == b"complete"
    assert [p.name for p in (local.root / "job-4").iterdir()] == ["video.mp4"]


@pytest.mark.parametrize(
    "key", ["../escape", "/etc/passwd", "job/../../escape", "job//x", "job\\..\\x", "", ".",
            "job\n/manifest.json", "job\r/x", "job/x\x00", "job\t/x", "job\x7f/x"]
)
def test_keys_that_escape_or_blur_the_local_root_are_refused(local: LocalStorage, key: str) -> None:
    # When a key that is not a plain relative path is used, Then storage refuses it
    with pytest.raises(DanceError) as excinfo:
        local.put_bytes(key, b"x", "text/plain")
    assert excinfo.value.code == "storage.forbidden"
    assert not (local.root.parent / "escape").exists()


def test_a_symlink_planted_in_the_local_root_cannot_lead_reads_or_writes_outside(
    local: LocalStorage, tmp_path: Path
) -> None:
    # Given a folder outside the root with a secret, and a symlink to it inside the root
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (local.root / "job-5").mkdir()
    os.symlink(outside, local.root / "job-5" / "link")
    # When the link is used to write, read, own or download
    for attempt in (
        lambda: local.put_bytes("job-5/link/planted.txt", b"x", "text/plain"),
        lambda: local.read_bytes("job-5/link/secret.txt", READ_CAP_BYTES),
    ):
        with pytest.raises(DanceError) as excinfo:
            attempt()
        assert excinfo.value.code == "storage.forbidden"
    uri = (local.root / "job-5" / "link" / "secret.txt").as_uri()
    with pytest.raises(DanceError) as excinfo:
        local.download(uri, tmp_path / "copy", READ_CAP_BYTES)
    # Then nothing outside changed and the URI is not the storage's
    assert excinfo.value.code == "input.forbidden"
    assert not local.owns(uri)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_local_storage_downloads_only_what_it_owns(local: LocalStorage, tmp_path: Path) -> None:
    # Given a stored input and a file outside the root
    stored = local.put_bytes("job-6/inputs/reference.png", b"png-bytes", "image/png")
    (tmp_path / "elsewhere.png").write_bytes(b"other")
    # When each is downloaded, Then the owned one copies, the rest are refused with input codes
    assert local.download(stored.uri, tmp_path / "copy.png", READ_CAP_BYTES) == len(b"png-bytes")
    assert (tmp_path / "copy.png").read_bytes() == b"png-bytes"
    cases = {
        (tmp_path / "elsewhere.png").as_uri(): "input.forbidden",
        (local.root / "job-6" / "missing.png").as_uri(): "input.not_found",
        "s3://bucket/job-6/inputs/reference.png": "input.scheme_unsupported",
    }
    for uri, code in cases.items():
        with pytest.raises(DanceError) as excinfo:
            local.download(uri, tmp_path / "copy2.png", READ_CAP_BYTES)
        assert excinfo.value.code == code, uri


def test_a_local_download_over_the_cap_reports_input_too_large_and_leaves_no_file(
    local: LocalStorage, tmp_path: Path
) -> None:
    stored = local.put_bytes("job-7/inputs/video.mp4", b"x" * 1000, "video/mp4")
    with pytest.raises(DanceError) as excinfo:
        local.download(stored.uri, tmp_path / "copy.mp4", 999)
    assert excinfo.value.code == "input.too_large"
    assert not (tmp_path / "copy.mp4").exists()


def test_reading_a_missing_or_oversized_local_object_reports_storage_codes(local: LocalStorage) -> None:
    local.put_bytes("job-8/manifest.json", b"{}" * 10, "application/json")
    with pytest.raises(DanceError) as missing:
        local.read_bytes("job-8/nothing.json", READ_CAP_BYTES)
    with pytest.raises(DanceError) as oversized:
        local.read_bytes("job-8/manifest.json", 19)
    assert (missing.value.code, oversized.value.code) == ("storage.not_found", "storage.too_large")
    assert not local.exists("job-8/nothing.json")


def test_delete_prefix_removes_one_jobs_folder_and_not_a_neighbour_sharing_its_name(
    local: LocalStorage
) -> None:
    # Given two jobs whose ids share a prefix
    local.put_bytes("job1/a.txt", b"a", "text/plain")
    local.put_bytes("job1/sub/b.txt", b"b", "text/plain")
    local.put_bytes("job10/c.txt", b"c", "text/plain")
    # When job1 is deleted
    deleted = local.delete_prefix("job1")
    # Then only job1's objects are gone
    assert deleted == 2
    assert not local.exists("job1/a.txt")
    assert local.exists("job10/c.txt")
    assert local.delete_prefix("never-existed") == 0


@pytest.mark.parametrize(
    "url",
    ["ftp://host/x", "file://relative/path", "file://remote-host/abs", "s3://", "s3:///prefix", "storage"],
)
def test_a_storage_url_that_cannot_work_is_config_invalid(url: str) -> None:
    with pytest.raises(DanceError) as excinfo:
        open_storage(url)
    assert excinfo.value.code == "config.invalid"

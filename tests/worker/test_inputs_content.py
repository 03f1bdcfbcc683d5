"""What a fetched input may be: its scheme, where it is stored, and what its bytes turn out to be."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from harness.seaweed import S3Server
from tests.fixtures.media_server import MediaServer, SampleMedia, fetch_error, fetch_settings, leftovers
from worker.inputs import fetch_input, sniff_media
from worker.inputs.sniff import sniff_bytes
from worker.storage import LocalStorage, open_storage


# Schemes and storage -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ref", ["ftp://127.0.0.1/x.png", "data:image/png;base64,iVBORw0KGgo=", "/etc/passwd", "gopher://x/1"]
)
def test_references_of_other_schemes_are_refused(ref: str, dest: Path, storage: LocalStorage) -> None:
    assert fetch_error(ref, dest, storage).code == "input.scheme_unsupported"


@pytest.mark.parametrize("ref", ["http:///no-host.png", "http://127.0.0.1:99999/x.png", "https://:443/x.png"])
def test_an_http_url_without_a_usable_host_or_port_is_a_bad_media_reference(
    ref: str, dest: Path, storage: LocalStorage
) -> None:
    assert fetch_error(ref, dest, storage).code == "request.bad_media_reference"


def test_a_file_uri_outside_the_workers_storage_is_refused(
    tmp_path: Path, sample_media: SampleMedia, dest: Path, storage: LocalStorage
) -> None:
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(sample_media.png)
    assert fetch_error(outside.as_uri(), dest, storage).code == "input.scheme_unsupported"


def test_a_file_uri_inside_the_workers_storage_is_fetched(
    sample_media: SampleMedia, dest: Path, storage: LocalStorage
) -> None:
    stored = storage.put_bytes("job-1/inputs/reference.png", sample_media.png, "image/png")
    fetched = fetch_input(stored.uri, dest, "image", fetch_settings(), storage)
    assert fetched.sha256 == stored.sha256


def test_an_s3_input_is_fetched_with_the_workers_credentials(
    s3_env: S3Server, sample_media: SampleMedia, dest: Path
) -> None:
    s3 = open_storage(f"s3://{s3_env.bucket}/inputs-test")
    stored = s3.put_bytes("job-2/inputs/video.mp4", sample_media.mp4, "video/mp4")
    fetched = fetch_input(stored.uri, dest, "video", fetch_settings(), s3)
    assert (fetched.sha256, fetched.content_type) == (stored.sha256, "video/mp4")
    missing = fetch_error(stored.uri.replace("video.mp4", "none.mp4"), dest, s3, kind="video")
    assert missing.code == "input.not_found"


def test_an_s3_input_is_refused_by_a_worker_with_local_storage(dest: Path, storage: LocalStorage) -> None:
    assert fetch_error("s3://bucket/job/inputs/video.mp4", dest, storage).code == "input.scheme_unsupported"


# Content -----------------------------------------------------------------------------------------------
def test_bytes_that_are_not_media_are_refused_as_input_not_media(
    media_server: MediaServer, dest: Path, storage: LocalStorage
) -> None:
    url = media_server.serve("/fake.png", b"<html>not an image</html>", content_type="image/png")
    assert fetch_error(url, dest, storage).code == "input.not_media"
    assert leftovers(dest) == []


def test_an_image_where_a_video_is_expected_and_the_reverse_are_wrong_kind(
    media_server: MediaServer, sample_media: SampleMedia, dest: Path, storage: LocalStorage
) -> None:
    image_url = media_server.serve("/still.png", sample_media.png)
    video_url = media_server.serve("/clip.mp4", sample_media.mp4)
    assert fetch_error(image_url, dest, storage, kind="video").code == "input.wrong_kind"
    assert fetch_error(video_url, dest, storage, kind="image").code == "input.wrong_kind"


def test_a_truncated_image_is_refused_as_corrupt(
    media_server: MediaServer, sample_media: SampleMedia, dest: Path, storage: LocalStorage
) -> None:
    png = sample_media.png
    url = media_server.serve("/cut.png", png[: len(png) - 20])
    assert fetch_error(url, dest, storage).code == "input.corrupt"


def test_a_video_whose_header_is_followed_by_garbage_is_refused_as_corrupt(
    media_server: MediaServer, sample_media: SampleMedia, dest: Path, storage: LocalStorage
) -> None:
    url = media_server.serve("/garbage.mp4", sample_media.mp4[:32] + b"\0garbage" * 200)
    assert fetch_error(url, dest, storage, kind="video").code == "input.corrupt"


def test_an_image_with_more_pixels_than_the_cap_is_refused_as_too_large(
    media_server: MediaServer, dest: Path, storage: LocalStorage, tmp_path: Path
) -> None:
    # A one-bit picture keeps the 9600 x 4800 canvas small in memory and on the wire.
    huge = tmp_path / "huge.png"
    Image.new("1", (9600, 4800)).save(huge)
    url = media_server.serve("/huge.png", huge.read_bytes())
    assert fetch_error(url, dest, storage, max_download_bytes=1 << 20).code == "input.too_large"


@pytest.mark.parametrize(
    ("name", "expected"),
    [("png", ("image", "image/png", ".png")), ("jpeg", ("image", "image/jpeg", ".jpg")),
     ("gif", ("image", "image/gif", ".gif")), ("bmp", ("image", "image/bmp", ".bmp")),
     ("webp", ("image", "image/webp", ".webp"))],
)
def test_sniff_media_names_each_image_format(
    sample_media: SampleMedia, tmp_path: Path, name: str, expected: tuple[str, str, str]
) -> None:
    path = tmp_path / "no-extension"
    path.write_bytes(sample_media.images[name])
    assert tuple(sniff_media(path)) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [("mp4", ("video", "video/mp4", ".mp4")), ("mov", ("video", "video/quicktime", ".mov")),
     ("webm", ("video", "video/webm", ".webm")), ("mkv", ("video", "video/x-matroska", ".mkv")),
     ("avi", ("video", "video/x-msvideo", ".avi"))],
)
def test_sniff_media_names_each_video_format(
    sample_media: SampleMedia, tmp_path: Path, name: str, expected: tuple[str, str, str]
) -> None:
    path = tmp_path / "clip.txt"
    path.write_bytes(sample_media.videos[name])
    assert tuple(sniff_media(path)) == expected


def test_still_image_brands_in_an_iso_media_box_are_not_taken_for_video() -> None:
    assert sniff_bytes(b"\0\0\0\x1cftypavif\0\0\0\0avifmif1") is None
    assert sniff_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic") is None

"""Fetching media over HTTP from a real misbehaving server: status codes, retries, time and size."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from tests.fixtures.media_server import (
    CAP_BYTES,
    MediaServer,
    Route,
    SampleMedia,
    fetch_error,
    fetch_settings,
    leftovers,
)
from tests.support.processes import free_port
from worker.inputs import fetch_input
from worker.storage import LocalStorage


# Success -----------------------------------------------------------------------------------------------
def test_a_png_over_http_is_fetched_sniffed_and_named_by_its_content(
    media_server: MediaServer, sample_media: SampleMedia, dest: Path, storage: LocalStorage
) -> None:
    # Given a PNG served under a misleading name and content type
    url = media_server.serve("/photo.jpg", sample_media.png, content_type="video/mp4")
    # When it is fetched as an image
    fetched = fetch_input(url, dest, "image", fetch_settings(), storage)
    # Then the bytes decide: a PNG, named by its hash, with size and hash recorded
    digest = hashlib.sha256(sample_media.png).hexdigest()
    assert fetched.path == dest / f"image-{digest[:16]}.png"
    assert fetched.path.read_bytes() == sample_media.png
    assert (fetched.bytes, fetched.sha256) == (len(sample_media.png), digest)
    assert fetched.content_type == "image/png"
    assert fetched.source == url
    assert leftovers(dest) == [fetched.path.name]


@pytest.mark.parametrize("extension", ["mp4", "mov", "webm", "mkv", "avi"])
def test_each_video_container_is_fetched_as_a_video(
    media_server: MediaServer, sample_media: SampleMedia, dest: Path, storage: LocalStorage, extension: str
) -> None:
    url = media_server.serve("/dance", sample_media.videos[extension])
    fetched = fetch_input(url, dest, "video", fetch_settings(), storage)
    assert fetched.path.suffix == f".{extension}"
    assert fetched.content_type.startswith("video/")


def test_a_gif_is_accepted_where_a_video_is_expected(
    media_server: MediaServer, sample_media: SampleMedia, dest: Path, storage: LocalStorage
) -> None:
    url = media_server.serve("/moves.gif", sample_media.images["gif"])
    fetched = fetch_input(url, dest, "video", fetch_settings(), storage)
    assert fetched.content_type == "image/gif"


def test_a_redirect_is_followed_to_the_media(
    media_server: MediaServer, sample_media: SampleMedia, dest: Path, storage: LocalStorage
) -> None:
    media_server.route("/short", Route(status=301, location="/long/path.png"))
    media_server.serve("/long/path.png", sample_media.png)
    fetched = fetch_input(media_server.url("/short"), dest, "image", fetch_settings(), storage)
    assert fetched.path.read_bytes() == sample_media.png
    assert (media_server.hits("/short"), media_server.hits("/long/path.png")) == (1, 1)


# Status codes and retries ------------------------------------------------------------------------------
def test_a_404_is_not_retried_and_reports_input_not_found(
    media_server: MediaServer, dest: Path, storage: LocalStorage
) -> None:
    url = media_server.route("/gone", Route(status=404))
    failure = fetch_error(url, dest, storage)
    assert (failure.code, failure.details["status"]) == ("input.not_found", 404)
    assert media_server.hits("/gone") == 1
    assert leftovers(dest) == []


@pytest.mark.parametrize(
    ("status", "code"),
    [(410, "input.not_found"), (401, "input.forbidden"), (403, "input.forbidden"), (400, "input.http_error"),
     (418, "input.http_error"), (429, "input.http_error")],
)
def test_client_errors_are_never_retried_and_map_to_their_codes(
    media_server: MediaServer, dest: Path, storage: LocalStorage, status: int, code: str
) -> None:
    url = media_server.route("/refused", Route(body=b"no", status=status))
    failure = fetch_error(url, dest, storage)
    assert (failure.code, failure.retryable) == (code, False)
    assert media_server.hits("/refused") == 1


def test_a_server_failing_twice_then_answering_is_retried_until_it_answers(
    media_server: MediaServer, sample_media: SampleMedia, dest: Path, storage: LocalStorage
) -> None:
    url = media_server.serve("/flaky.png", sample_media.png, fail_times=2, fail_status=503)
    fetched = fetch_input(url, dest, "image", fetch_settings(attempts=3), storage)
    assert fetched.bytes == len(sample_media.png)
    assert media_server.hits("/flaky.png") == 3


def test_a_server_that_keeps_failing_reports_input_server_error_after_every_attempt(
    media_server: MediaServer, dest: Path, storage: LocalStorage
) -> None:
    url = media_server.route("/broken", Route(fail_times=100))
    failure = fetch_error(url, dest, storage, attempts=3)
    assert (failure.code, failure.details["status"], failure.retryable) == ("input.server_error", 500, True)
    assert media_server.hits("/broken") == 3


def test_a_reset_connection_is_retried(
    media_server: MediaServer, sample_media: SampleMedia, dest: Path, storage: LocalStorage
) -> None:
    url = media_server.serve("/reset.png", sample_media.png, reset_times=1)
    fetched = fetch_input(url, dest, "image", fetch_settings(attempts=2), storage)
    assert fetched.bytes == len(sample_media.png)
    assert media_server.hits("/reset.png") == 2


def test_a_refused_connection_reports_input_unreachable(dest: Path, storage: LocalStorage) -> None:
    failure = fetch_error(f"http://127.0.0.1:{free_port()}/x.png", dest, storage, attempts=2)
    assert (failure.code, failure.retryable) == ("input.unreachable", True)


# Time and size -----------------------------------------------------------------------------------------
def test_a_body_trickling_past_the_total_deadline_times_out_although_every_read_is_quick(
    media_server: MediaServer, dest: Path, storage: LocalStorage
) -> None:
    # Given a host that sends a piece every 50 ms, far too slowly to finish in time
    url = media_server.serve("/trickle", b"x" * 50_000, bytes_per_s=2_000)
    # When it is fetched with a 0.6 s total deadline and a per-read timeout far longer than a piece
    began = time.monotonic()
    failure = fetch_error(url, dest, storage, download_timeout_s=0.6, connect_timeout_s=5.0, attempts=3)
    # Then the total deadline ends it, with no retry past the deadline
    assert failure.code == "input.timeout"
    assert time.monotonic() - began < 3.0
    assert media_server.hits("/trickle") == 1
    assert leftovers(dest) == []


def test_a_host_that_stalls_after_its_headers_reports_input_timeout(
    media_server: MediaServer, dest: Path, storage: LocalStorage
) -> None:
    url = media_server.serve("/stall", b"x" * 1000, bytes_per_s=0)
    began = time.monotonic()
    failure = fetch_error(url, dest, storage, download_timeout_s=0.5)
    assert failure.code == "input.timeout"
    assert time.monotonic() - began < 3.0


def test_a_declared_length_over_the_cap_is_refused_before_the_body_is_read(
    media_server: MediaServer, dest: Path, storage: LocalStorage
) -> None:
    # Given a body over the cap that would take minutes to send
    url = media_server.serve("/huge", b"x" * (CAP_BYTES + 1), bytes_per_s=100)
    # When it is fetched, Then Content-Length alone refuses it, at once and without retries
    began = time.monotonic()
    failure = fetch_error(url, dest, storage)
    assert (failure.code, failure.details["declared_bytes"]) == ("input.too_large", CAP_BYTES + 1)
    assert time.monotonic() - began < 3.0
    assert media_server.hits("/huge") == 1


def test_a_body_without_a_length_is_cut_off_at_the_cap_while_streaming(
    media_server: MediaServer, dest: Path, storage: LocalStorage
) -> None:
    url = media_server.serve("/endless", b"x" * (4 * CAP_BYTES), omit_length=True)
    failure = fetch_error(url, dest, storage)
    assert failure.code == "input.too_large"
    assert media_server.hits("/endless") == 1
    assert leftovers(dest) == []


def test_a_length_that_lies_low_truncates_the_image_which_is_refused_as_corrupt(
    media_server: MediaServer, sample_media: SampleMedia, dest: Path, storage: LocalStorage
) -> None:
    jpeg = sample_media.images["jpeg"]
    url = media_server.serve("/short.jpg", jpeg, declared_length=len(jpeg) // 2)
    assert fetch_error(url, dest, storage).code == "input.corrupt"


def test_a_length_that_lies_high_is_a_dropped_connection_and_is_retried(
    media_server: MediaServer, sample_media: SampleMedia, dest: Path, storage: LocalStorage
) -> None:
    url = media_server.serve("/long.png", sample_media.png, declared_length=len(sample_media.png) + 100)
    failure = fetch_error(url, dest, storage, attempts=2)
    assert (failure.code, failure.retryable) == ("input.unreachable", True)
    assert media_server.hits("/long.png") == 2

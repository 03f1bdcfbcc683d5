"""Forty kinds of bad input through one real worker: each fails with its own code, none is retried,
and the worker is unharmed (it completes a good job afterwards)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from producer import errors, keys
from producer.celeryconf import TASK_NAME
from producer.client import JobHandle
from tests.fixtures.media_server import TlsMediaServer
from tests.fixtures.workers import Cluster
from tests.support.jobs import dance_request
from tests.support.processes import free_port

#: Fast failure settings for the transient kinds (5xx, timeout), which are retried before they fail.
WORKER_ENV = {"DANCE_DOWNLOAD_ATTEMPTS": "2", "DANCE_DOWNLOAD_TIMEOUT_S": "2", "DANCE_MAX_DOWNLOAD_BYTES": "200000"}


def request_kinds(good: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Requests sent straight to the queue (as a client that skips our producer would), for the
    worker's own validation."""
    return [
        ("body is a list", ["x"], errors.REQUEST_NOT_OBJECT),
        ("missing reference image", {k: v for k, v in good.items() if k != "reference_image"},
         errors.REQUEST_MISSING_FIELD),
        ("missing prompt", {k: v for k, v in good.items() if k != "prompt"}, errors.REQUEST_MISSING_FIELD),
        ("width is a string", {**good, "width": "512"}, errors.REQUEST_WRONG_TYPE),
        ("seed is a float", {**good, "seed": 1.5}, errors.REQUEST_WRONG_TYPE),
        ("height too large", {**good, "height": 8192}, errors.REQUEST_OUT_OF_RANGE),
        ("steps out of range", {**good, "steps": 500}, errors.REQUEST_OUT_OF_RANGE),
        ("unknown field", {**good, "fps": 30}, errors.REQUEST_UNKNOWN_FIELD),
        ("oversize prompt", {**good, "prompt": "x" * 5000}, errors.REQUEST_TEXT_TOO_LONG),
        ("field given twice", {**good, "images": {"reference_image": good["reference_image"]}},
         errors.REQUEST_DUPLICATE_FIELD),
        ("ftp scheme", {**good, "reference_image": "ftp://example.com/a.png"}, errors.REQUEST_BAD_MEDIA_REF),
    ]


#: Job ids that a client skipping our producer may send; the worker's storage refuses the key they make.
BAD_JOB_IDS = [("job id with a trailing newline", "bad-id-newline\n"), ("job id with a carriage return", "bad\rid")]


def media_kinds(server: Any, tls: TlsMediaServer, good: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(kind, field, URL, expected code) for media that exists but may not or cannot be used."""
    video = good["dance_video"]
    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * 300_000
    port = server.port
    return [
        ("404", "reference_image", server.serve("/404", b"", status=404), errors.INPUT_NOT_FOUND),
        ("410", "dance_video", server.serve("/410", b"", status=410), errors.INPUT_NOT_FOUND),
        ("401", "reference_image", server.serve("/401", b"", status=401), errors.INPUT_FORBIDDEN),
        ("403", "dance_video", server.serve("/403", b"", status=403), errors.INPUT_FORBIDDEN),
        ("418", "reference_image", server.serve("/418", b"", status=418), errors.INPUT_HTTP_ERROR),
        ("500 every time", "reference_image", server.serve("/500", b"", status=500), errors.INPUT_SERVER_ERROR),
        ("a stalled body", "dance_video", server.serve("/stall", b"x" * 1000, bytes_per_s=0), errors.INPUT_TIMEOUT),
        ("connection refused", "reference_image", f"http://127.0.0.1:{free_port()}/a.png", errors.INPUT_UNREACHABLE),
        ("redirect loop", "reference_image", server.serve("/loop", b"", status=302, location="/loop"),
         errors.INPUT_REDIRECTS),
        ("over the size cap", "reference_image", server.serve("/big.png", big), errors.INPUT_TOO_LARGE),
        ("html, not media", "reference_image", server.serve("/page.png", b"<html>hi</html>"), errors.INPUT_NOT_MEDIA),
        ("a video as the image", "reference_image", video, errors.INPUT_WRONG_KIND),
        ("an image as the video", "dance_video", good["reference_image"], errors.INPUT_WRONG_KIND),
        ("truncated png", "reference_image", server.serve("/cut.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64),
         errors.INPUT_CORRUPT),
        ("corrupt video", "dance_video", server.serve("/bad.mp4", b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 500),
         errors.INPUT_CORRUPT),
        ("private address", "reference_image", "http://10.1.2.3/a.png", errors.INPUT_BLOCKED),
        ("metadata address", "reference_image", "http://169.254.169.254/latest/meta-data", errors.INPUT_BLOCKED),
        ("other loopback", "dance_video", "http://127.0.0.2:8080/v.mp4", errors.INPUT_BLOCKED),
        ("redirect to a private address", "reference_image",
         server.serve("/to-private", b"", status=302, location="http://192.168.1.1/a.png"), errors.INPUT_BLOCKED),
        ("file outside storage", "reference_image", "file:///etc/passwd", errors.INPUT_SCHEME),
        ("site-local IPv6", "reference_image", "http://[fec0::1]/a.png", errors.INPUT_BLOCKED),
        # 127.0.0.2 (only 127.0.0.1 is allowed here) in every spelling the C resolver reads
        ("decimal IPv4", "reference_image", f"http://2130706434:{port}/a.png", errors.INPUT_BLOCKED),
        ("octal IPv4", "reference_image", f"http://0177.0.0.2:{port}/a.png", errors.INPUT_BLOCKED),
        ("hex IPv4", "dance_video", f"http://0x7f.0.0.2:{port}/v.mp4", errors.INPUT_BLOCKED),
        ("short IPv4", "dance_video", f"http://127.2:{port}/v.mp4", errors.INPUT_BLOCKED),
        ("decimal private IPv4", "reference_image", "http://167772161/a.png", errors.INPUT_BLOCKED),
        ("https redirecting to http", "reference_image",
         tls.server.serve("/to-plain", b"", status=302, location=server.serve("/plain.png", b"")),
         errors.INPUT_INSECURE_REDIRECT),
    ]


def test_forty_kinds_of_bad_input_each_fail_with_their_code_and_are_never_retried(
    cluster: Cluster, comfysim: Any, media_server: Any, tls_media_server: TlsMediaServer, tmp_path: Path
) -> None:
    # Given one ready worker that trusts the https media server's authority
    sim = comfysim(exec_s=0.1)
    worker = cluster.start_worker("w", sim.url, DANCE_FETCH_CA_BUNDLE=str(tls_media_server.ca_bundle),
                                  **WORKER_ENV)
    good = dance_request(media_server, tmp_path)
    expected: dict[str, tuple[str, str]] = {}
    with cluster.client() as client:
        # When every kind of bad input is sent
        for index, (kind, body, code) in enumerate(request_kinds(good)):
            job_id = f"bad-request-{index}"
            client.app.send_task(TASK_NAME, kwargs={"request": body}, task_id=job_id, queue="dance")
            client.redis.set(keys.submitted(job_id), "dance")
            expected[job_id] = (kind, code)
        for kind, job_id in BAD_JOB_IDS:
            client.app.send_task(TASK_NAME, kwargs={"request": good}, task_id=job_id, queue="dance")
            client.redis.set(keys.submitted(job_id), "dance")
            expected[job_id] = (kind, errors.REQUEST_BAD_OPTION)
        for index, (kind, field, url, code) in enumerate(media_kinds(media_server, tls_media_server, good)):
            handle = client.submit({**good, field: url}, job_id=f"bad-media-{index}")
            expected[handle.id] = (kind, code)
        # Then each fails with its own code and a message
        seen: dict[str, str] = {}
        for job_id, (kind, code) in expected.items():
            with pytest.raises(errors.DanceError) as raised:
                # JobHandle, not client.job(): the producer's own check refuses the bad ids
                JobHandle(client, job_id).result(timeout_s=60)
            assert raised.value.code == code, f"{kind}: {raised.value}"
            assert (raised.value.message and not raised.value.retryable) or code in _TRANSIENT
            seen[kind] = code
        # and the worker is unharmed: the next good job succeeds
        assert client.submit(good).result(timeout_s=60)["status"] == "succeeded"
    assert len(seen) == len(expected) == 40
    # and nothing permanent was retried: a bad request fails before its run owns the job (no attempt is
    # counted), every bad medium's job started once, and 4xx URLs were fetched once
    broker = redis.Redis.from_url(cluster.broker_url)
    attempts = {job_id: int(broker.get(keys.attempts(job_id)) or 0) for job_id in expected}
    assert all(count == (1 if job_id.startswith("bad-media-") else 0) for job_id, count in attempts.items()), attempts
    for path in ("/404", "/410", "/401", "/403", "/418", "/loop"):
        assert media_server.hits(path) <= (5 if path == "/loop" else 1), path
    # and the downgrade was refused before the plain hop
    assert (tls_media_server.server.hits("/to-plain"), media_server.hits("/plain.png")) == (1, 0)
    assert media_server.hits("/500") == 2  # transient: retried up to DANCE_DOWNLOAD_ATTEMPTS
    assert sim.state()["prompts_received"] == 1
    assert worker.poll() is None


#: Transient kinds that are retried (a few times, within the download) before they fail the job.
_TRANSIENT = {errors.INPUT_SERVER_ERROR, errors.INPUT_TIMEOUT, errors.INPUT_UNREACHABLE}

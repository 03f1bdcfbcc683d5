"""The SSRF guard and redirects: which addresses a media URL may reach, and what errors may show."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from producer.errors import DanceError
from tests.fixtures.media_server import MediaServer, Route, SampleMedia, fetch_error, fetch_settings
from worker.inputs import fetch_input
from worker.inputs.guard import AllowList, blocked_reason, pin_address
from worker.inputs.http import MAX_REDIRECTS
from worker.storage import LocalStorage


# Redirects and the SSRF guard --------------------------------------------------------------------------
def test_a_redirect_loop_reports_input_too_many_redirects(
    media_server: MediaServer, dest: Path, storage: LocalStorage
) -> None:
    media_server.route("/ping", Route(location="/pong"))
    media_server.route("/pong", Route(location="/ping"))
    failure = fetch_error(media_server.url("/ping"), dest, storage)
    assert failure.code == "input.too_many_redirects"
    assert (media_server.hits("/ping"), media_server.hits("/pong")) == (1, 1)


def test_a_redirect_chain_longer_than_the_limit_reports_input_too_many_redirects(
    media_server: MediaServer, dest: Path, storage: LocalStorage
) -> None:
    for hop in range(MAX_REDIRECTS + 1):
        media_server.route(f"/hop{hop}", Route(status=307, location=f"/hop{hop + 1}"))
    failure = fetch_error(media_server.url("/hop0"), dest, storage)
    assert (failure.code, failure.details["max"]) == ("input.too_many_redirects", MAX_REDIRECTS)
    assert media_server.hits(f"/hop{MAX_REDIRECTS + 1}") == 0


def test_loopback_is_refused_unless_allow_listed(
    media_server: MediaServer, sample_media: SampleMedia, dest: Path, storage: LocalStorage
) -> None:
    url = media_server.serve("/private.png", sample_media.png)
    failure = fetch_error(url, dest, storage, allow_hosts=())
    assert (failure.code, failure.details["reason"]) == ("input.address_blocked", "loopback")
    assert media_server.hits("/private.png") == 0


@pytest.mark.parametrize("entry", ["127.0.0.1", "127.0.0.0/8", "localhost", "LOCALHOST."])
def test_the_allow_list_takes_a_host_name_an_address_or_a_network(
    media_server: MediaServer, sample_media: SampleMedia, dest: Path, storage: LocalStorage, entry: str
) -> None:
    media_server.serve("/allowed.png", sample_media.png)
    url = f"http://localhost:{media_server.port}/allowed.png"
    fetched = fetch_input(url, dest, "image", fetch_settings(allow_hosts=(entry,)), storage)
    assert fetched.bytes == len(sample_media.png)


def test_a_redirect_from_an_allowed_host_to_a_blocked_one_is_refused(
    media_server: MediaServer, dest: Path, storage: LocalStorage
) -> None:
    # Given an allow-listed host that redirects to another loopback address that is not allowed
    media_server.route("/bounce", Route(location=f"http://127.0.0.2:{media_server.port}/inside"))
    # When it is fetched, Then the second hop is refused before any connection is made
    failure = fetch_error(media_server.url("/bounce"), dest, storage)
    assert (failure.code, failure.details["host"]) == ("input.address_blocked", "127.0.0.2")


@pytest.mark.parametrize(
    ("address", "reason"),
    [("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
     ("169.254.169.254", "link_local"), ("127.0.0.1", "loopback"), ("0.0.0.0", "unspecified"),
     ("224.0.0.1", "multicast"), ("240.0.0.1", "reserved"), ("100.64.0.1", "not_global"),
     ("::1", "loopback"), ("fe80::1", "link_local"), ("fc00::1", "private"), ("::", "unspecified"),
     ("ff02::1", "multicast"), ("::ffff:10.0.0.1", "private"), ("2002:a9fe:a9fe::1", "link_local")],
)
def test_internal_addresses_are_blocked_without_being_contacted(address: str, reason: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) == reason
    with pytest.raises(DanceError) as excinfo:
        pin_address(address, 80, AllowList())
    assert (excinfo.value.code, excinfo.value.details["reason"]) == ("input.address_blocked", reason)


def test_a_public_address_passes_the_guard_and_is_the_one_pinned() -> None:
    # A literal address is checked without DNS and without any connection.
    assert blocked_reason(ipaddress.ip_address("93.184.216.34")) is None
    assert pin_address("93.184.216.34", 443, AllowList()) == "93.184.216.34"
    assert pin_address("10.0.0.7", 80, AllowList.parse(["10.0.0.0/8"])) == "10.0.0.7"


def test_a_redirect_to_another_scheme_is_refused(
    media_server: MediaServer, dest: Path, storage: LocalStorage
) -> None:
    media_server.route("/to-ftp", Route(location="ftp://127.0.0.1/file.png"))
    assert fetch_error(media_server.url("/to-ftp"), dest, storage).code == "input.scheme_unsupported"


def test_error_details_never_carry_credentials_or_signed_query_strings(
    media_server: MediaServer, dest: Path, storage: LocalStorage
) -> None:
    # Given a URL with user:password and a signed query that answers 404
    media_server.route("/signed.png", Route(status=404))
    url = f"http://user:hunter2@127.0.0.1:{media_server.port}/signed.png?X-Amz-Signature=deadbeef&token=s3cr3t"
    # When it fails, Then neither the message, the details nor the whole error mention the secrets
    failure = fetch_error(url, dest, storage)
    shown = json.dumps(failure.as_dict()) + str(failure) + repr(failure.args)
    for secret in ("hunter2", "deadbeef", "s3cr3t", "Signature", "user@"):
        assert secret not in shown
    assert failure.details["url"] == f"http://127.0.0.1:{media_server.port}/signed.png"

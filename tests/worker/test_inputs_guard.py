"""The SSRF guard and redirects: which addresses a media URL may reach, and what errors may show."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from producer.errors import DanceError
from tests.fixtures.media_server import (
    MediaServer,
    Route,
    SampleMedia,
    TlsMediaServer,
    fetch_error,
    fetch_settings,
)
from tests.support.dns import LOOPBACK_SPELLINGS, RebindingDns
from worker.inputs import fetch_input
from worker.inputs.guard import AllowList, blocked_reason, pin_address
from worker.inputs.http import MAX_REDIRECTS, download_http
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
     ("ff02::1", "multicast"), ("::ffff:10.0.0.1", "private"), ("2002:a9fe:a9fe::1", "link_local"),
     ("fec0::1", "site_local"), ("::ffff:127.0.0.1", "loopback")],
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


# Numeric IPv4 spellings, site-local IPv6, https downgrades and DNS rebinding -----------------------------
@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
def test_a_numeric_spelling_of_loopback_is_refused_as_loopback_without_a_connection(
    media_server: MediaServer, sample_media: SampleMedia, dest: Path, storage: LocalStorage, spelling: str
) -> None:
    # Given media on 127.0.0.1, named by another spelling of that address
    media_server.serve("/a.png", sample_media.png)
    # When it is fetched with nothing allow-listed
    failure = fetch_error(f"http://{spelling}:{media_server.port}/a.png", dest, storage, allow_hosts=())
    # Then the guard judged the address the spelling names, and nothing was contacted
    assert (failure.code, failure.details["address"], failure.details["reason"]) == (
        "input.address_blocked", "127.0.0.1", "loopback")
    assert media_server.hits("/a.png") == 0


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
def test_a_numeric_spelling_is_dialled_at_the_address_it_names_once_that_address_is_allowed(
    media_server: MediaServer, sample_media: SampleMedia, dest: Path, storage: LocalStorage, spelling: str
) -> None:
    media_server.serve("/a.png", sample_media.png)
    url = f"http://{spelling}:{media_server.port}/a.png"
    fetched = fetch_input(url, dest, "image", fetch_settings(allow_hosts=("127.0.0.1/32",)), storage)
    assert fetched.bytes == len(sample_media.png)
    assert media_server.hits("/a.png") == 1


def test_a_site_local_ipv6_address_is_refused() -> None:
    # fec0::/10 is deprecated, and Python's ipaddress counts it as global: the guard must not.
    with pytest.raises(DanceError) as excinfo:
        pin_address("fec0::1", 80, AllowList())
    assert (excinfo.value.code, excinfo.value.details["reason"]) == ("input.address_blocked", "site_local")
    assert blocked_reason(ipaddress.ip_address("fec0:1:2::3")) == "site_local"


def test_an_https_url_that_redirects_to_plain_http_is_refused_before_the_http_hop(
    tls_media_server: TlsMediaServer, media_server: MediaServer, sample_media: SampleMedia, dest: Path,
    storage: LocalStorage,
) -> None:
    # Given an https host that sends the client to plain http, where the media really is
    plain = media_server.serve("/a.png", sample_media.png)
    tls_media_server.server.route("/signed", Route(location=plain))
    secure = tls_media_server.server.url("/signed")
    # When it is fetched
    failure = fetch_error(secure + "?token=s3cr3t", dest, storage, ca_bundle=tls_media_server.ca_bundle)
    # Then the downgrade fails the fetch: the https hop was made, the plain one never
    assert (failure.code, failure.details["location"]) == ("input.insecure_redirect", plain)
    assert (tls_media_server.server.hits("/signed"), media_server.hits("/a.png")) == (1, 0)
    assert "s3cr3t" not in json.dumps(failure.as_dict())


def test_an_https_url_that_redirects_to_https_is_followed_with_the_configured_authority(
    tls_media_server: TlsMediaServer, sample_media: SampleMedia, dest: Path, storage: LocalStorage
) -> None:
    tls_media_server.server.route("/short", Route(location="/media.png"))
    tls_media_server.server.serve("/media.png", sample_media.png)
    url = tls_media_server.server.url("/short")
    fetched = fetch_input(url, dest, "image", fetch_settings(ca_bundle=tls_media_server.ca_bundle), storage)
    assert fetched.bytes == len(sample_media.png)


def test_a_rebinding_answer_is_looked_up_once_and_the_first_answer_is_the_one_pinned() -> None:
    # Given a name that resolves to a public address first and to loopback on every later lookup
    dns = RebindingDns("93.184.216.34", "127.0.0.1")
    # When the guard pins it (no connection is made here)
    pinned = pin_address("media.example", 443, AllowList(), dns)
    # Then it asked once and hands over the address it checked, for the connection to dial
    assert (pinned, dns.lookups) == ("93.184.216.34", ["media.example"])


def test_a_download_dials_the_address_that_was_checked_not_a_later_dns_answer(
    media_server: MediaServer, sample_media: SampleMedia, dest: Path
) -> None:
    # Given the "public" host (127.0.0.1, allowed) and an internal one on the same port at 127.0.0.2,
    # and a name whose DNS answer flips from the public address to the internal one after one lookup
    media_server.serve("/a.png", sample_media.png)
    internal = MediaServer(host="127.0.0.2", port=media_server.port).start()
    internal.serve("/a.png", b"internal secrets")
    dns = RebindingDns("127.0.0.1", "127.0.0.2")
    try:
        # When the name is downloaded through the real download path
        size = download_http(f"http://media.test:{media_server.port}/a.png", dest,
                             fetch_settings(allow_hosts=("127.0.0.1/32",)), resolver=dns)
        # Then the one lookup's checked address was dialled, and the internal host never saw a request
        assert (size, dest.read_bytes()) == (len(sample_media.png), sample_media.png)
        assert dns.lookups == ["media.test"]
        assert (media_server.hits("/a.png"), internal.hits("/a.png")) == (1, 0)
    finally:
        internal.stop()


def test_a_name_whose_first_answer_is_internal_is_refused_whatever_it_answers_later(
    media_server: MediaServer, dest: Path
) -> None:
    internal = MediaServer(host="127.0.0.2", port=media_server.port).start()
    dns = RebindingDns("127.0.0.2", "127.0.0.1")
    try:
        with pytest.raises(DanceError) as excinfo:
            download_http(f"http://media.test:{media_server.port}/a.png", dest,
                          fetch_settings(allow_hosts=("127.0.0.1/32",)), resolver=dns)
        assert (excinfo.value.code, excinfo.value.details["address"]) == ("input.address_blocked", "127.0.0.2")
        assert dns.lookups == ["media.test"]
        assert (media_server.hits("/a.png"), internal.hits("/a.png")) == (0, 0)
    finally:
        internal.stop()

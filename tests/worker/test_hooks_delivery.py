"""Webhook delivery passes the same SSRF guard as media downloads: every spelling of an internal address
is refused before a connection, and the POST dials the address that was checked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from producer.errors import DanceError
from tests.support.dns import LOOPBACK_SPELLINGS, RebindingDns
from tests.support.ops import WebhookReceiver, webhook_receiver
from worker.hooks.delivery import post
from worker.inputs.guard import AllowList

#: Timeout of one delivery in these tests, in seconds.
TIMEOUT_S = 10.0
#: The "public" address of these tests: loopback, allowed as a network so host names are still checked.
PUBLIC = AllowList.parse(["127.0.0.1/32"])

receiver = pytest.fixture(webhook_receiver)


@pytest.fixture
def internal(receiver: WebhookReceiver) -> Iterator[WebhookReceiver]:
    """An internal host at 127.0.0.2 on the same port as ``receiver``."""
    inside = WebhookReceiver(host="127.0.0.2", port=int(receiver.server.server_address[1]))
    try:
        yield inside
    finally:
        inside.stop()


def _port(receiver: WebhookReceiver) -> int:
    return int(receiver.server.server_address[1])


def test_a_site_local_ipv6_callback_is_refused() -> None:
    with pytest.raises(DanceError) as excinfo:
        post("http://[fec0::1]/hook", b"{}", {}, AllowList(), TIMEOUT_S)
    assert (excinfo.value.code, excinfo.value.details["reason"]) == ("webhook.address_blocked", "site_local")


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
def test_a_numeric_spelling_of_a_loopback_callback_is_refused_and_never_contacted(
    receiver: WebhookReceiver, spelling: str
) -> None:
    receiver.url("/hook")
    with pytest.raises(DanceError) as excinfo:
        post(f"http://{spelling}:{_port(receiver)}/hook", b"{}", {}, AllowList(), TIMEOUT_S)
    assert (excinfo.value.code, excinfo.value.details["address"]) == ("webhook.address_blocked", "127.0.0.1")
    assert receiver.to("/hook") == []


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
def test_a_numeric_spelling_is_delivered_to_the_address_it_names_once_allowed(
    receiver: WebhookReceiver, spelling: str
) -> None:
    receiver.url("/hook")
    assert post(f"http://{spelling}:{_port(receiver)}/hook", b"{}", {}, PUBLIC, TIMEOUT_S) == 204
    assert len(receiver.to("/hook")) == 1


def test_a_callback_is_posted_to_the_checked_address_not_a_later_dns_answer(
    receiver: WebhookReceiver, internal: WebhookReceiver
) -> None:
    # Given a callback name whose DNS answer flips from the allowed host to an internal one
    receiver.url("/hook")
    internal.url("/hook")
    dns = RebindingDns("127.0.0.1", "127.0.0.2")
    # When a webhook is delivered to it
    status = post(f"http://hooks.test:{_port(receiver)}/hook", b'{"ok": 1}', {}, PUBLIC, TIMEOUT_S, dns)
    # Then the name was looked up once and the POST reached the address that was checked
    assert (status, dns.lookups) == (204, ["hooks.test"])
    assert [d.body for d in receiver.to("/hook")] == [b'{"ok": 1}']
    assert internal.to("/hook") == []


def test_a_callback_whose_first_answer_is_internal_is_refused_whatever_it_answers_later(
    receiver: WebhookReceiver, internal: WebhookReceiver
) -> None:
    dns = RebindingDns("127.0.0.2", "127.0.0.1")
    with pytest.raises(DanceError) as excinfo:
        post(f"http://hooks.test:{_port(receiver)}/hook", b"{}", {}, PUBLIC, TIMEOUT_S, dns)
    assert (excinfo.value.code, excinfo.value.details["address"]) == ("webhook.address_blocked", "127.0.0.2")
    assert (dns.lookups, receiver.deliveries, internal.deliveries) == (["hooks.test"], [], [])

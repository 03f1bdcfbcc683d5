"""Standard Webhooks signatures: the specification's test vector, and what a receiver must refuse."""

from __future__ import annotations

import pytest

from producer.errors import CONFIG_INVALID, REQUEST_BAD_OPTION, DanceError
from producer.webhooks import SignatureInvalid, check_callback_url, signature, signed_headers, verify

#: The Standard Webhooks specification's published test vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_signature_matches_the_standard_webhooks_test_vector() -> None:
    from producer.webhooks import secret_key

    assert signature(secret_key(VECTOR_SECRET), VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TIMESTAMP),
               "webhook-signature": f"v1,bm90LXRoaXMtb25l {VECTOR_SIGNATURE}"}
    verify(VECTOR_SECRET, headers, VECTOR_BODY, now_s=VECTOR_TIMESTAMP + 10)


def test_a_tampered_body_an_old_timestamp_or_a_missing_header_is_refused() -> None:
    headers = signed_headers(VECTOR_SECRET, "msg_1", b'{"a": 1}', now_s=1_000_000)
    verify(VECTOR_SECRET, headers, b'{"a": 1}', now_s=1_000_100)
    with pytest.raises(SignatureInvalid):
        verify(VECTOR_SECRET, headers, b'{"a": 2}', now_s=1_000_100)
    with pytest.raises(SignatureInvalid):
        verify(VECTOR_SECRET, headers, b'{"a": 1}', now_s=1_000_000 + 301)
    with pytest.raises(SignatureInvalid):
        verify(VECTOR_SECRET, {k: v for k, v in headers.items() if k != "webhook-id"}, b'{"a": 1}')


def test_a_malformed_secret_or_callback_url_is_refused_with_its_code() -> None:
    with pytest.raises(DanceError) as raised:
        signed_headers("whsec_not base64!", "msg_1", b"{}")
    assert raised.value.code == CONFIG_INVALID
    for url in ("ftp://hooks.example/x", "https:///no-host", "hooks.example/x"):
        with pytest.raises(DanceError) as raised:
            check_callback_url(url)
        assert raised.value.code == REQUEST_BAD_OPTION

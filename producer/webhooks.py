"""Webhooks the Standard Webhooks way (https://www.standardwebhooks.com): signing, verifying, URL checks.

A delivery is a POST of a JSON body ``{"type", "timestamp", "data"}`` with three headers:

* ``webhook-id``: the message id, the same on every retry of one delivery (receivers deduplicate on it);
* ``webhook-timestamp``: Unix seconds when this attempt was signed;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``.

The secret is ``whsec_`` followed by the base64 of the key bytes (``DANCE_WEBHOOK_SECRET``). Receivers
written in Python can call :func:`verify`; any Standard Webhooks library verifies the same signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

from producer.errors import CONFIG_INVALID, REQUEST_BAD_OPTION, error

#: Prefix of a Standard Webhooks secret.
SECRET_PREFIX = "whsec_"
#: Version tag of the one signature scheme there is.
SIGNATURE_VERSION = "v1"
#: How far a delivery's timestamp may be from the receiver's clock, in seconds (the standard's default).
DEFAULT_TOLERANCE_S = 300
#: Longest callback URL accepted, in characters.
MAX_CALLBACK_URL_CHARS = 2048


class SignatureInvalid(ValueError):
    """A delivery whose signature, timestamp or headers do not verify (receiver side)."""


def secret_key(secret: str) -> bytes:
    """The key bytes of a ``whsec_<base64>`` secret."""
    body = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise error(CONFIG_INVALID, "DANCE_WEBHOOK_SECRET must be whsec_ followed by base64",
                    variable="DANCE_WEBHOOK_SECRET") from None
    if not key:
        raise error(CONFIG_INVALID, "DANCE_WEBHOOK_SECRET is empty", variable="DANCE_WEBHOOK_SECRET")
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one attempt."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signed_headers(secret: str, msg_id: str, body: bytes, now_s: float | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers (and the content type) for ``body``."""
    timestamp = int(time.time() if now_s is None else now_s)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret_key(secret), msg_id, timestamp, body),
        "content-type": "application/json",
    }


def verify(
    secret: str, headers: Mapping[str, str], body: bytes,
    tolerance_s: float = DEFAULT_TOLERANCE_S, now_s: float | None = None,
) -> None:
    """Raise :class:`SignatureInvalid` unless ``body`` and ``headers`` carry a valid, fresh signature."""
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        msg_id, raw_timestamp = lowered["webhook-id"], lowered["webhook-timestamp"]
        offered = lowered["webhook-signature"].split()
        timestamp = int(raw_timestamp)
    except (KeyError, ValueError) as exc:
        raise SignatureInvalid(f"missing or malformed webhook header: {exc}") from None
    now = time.time() if now_s is None else now_s
    if abs(now - timestamp) > tolerance_s:
        raise SignatureInvalid(f"timestamp {timestamp} is outside the {tolerance_s:g}s tolerance")
    expected = signature(secret_key(secret), msg_id, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
        raise SignatureInvalid("no signature matches")


def check_callback_url(url: str) -> str:
    """An http(s) URL with a host; where it may lead is the hooks worker's SSRF guard's call."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or len(url) > MAX_CALLBACK_URL_CHARS):
        raise error(REQUEST_BAD_OPTION, "callback_url must be an http:// or https:// URL with a host",
                    option="callback_url")
    return url

"""One webhook POST: SSRF-guarded, pinned to the checked address, bounded in time, classified by branch.

The callback host passes the same guard as media URLs (:mod:`worker.inputs.guard`): private, loopback
and link-local addresses are refused unless ``DANCE_WEBHOOK_ALLOW_HOSTS`` lists them, and the request
dials the address that was checked. Redirects are not followed (a 3xx is the endpoint's refusal), and
environment proxies are ignored, as for downloads.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import requests

from producer.errors import (
    INPUT_BLOCKED,
    WEBHOOK_BLOCKED,
    WEBHOOK_HTTP_ERROR,
    WEBHOOK_SERVER_ERROR,
    WEBHOOK_TIMEOUT,
    WEBHOOK_UNREACHABLE,
    DanceError,
    error,
)
from producer.redact import redact_url
from worker.inputs.guard import AllowList, Resolver, pin_address, system_resolver
from worker.inputs.transport import Deadline, PinnedAdapter

#: Default ports, for the guard's resolution.
DEFAULT_PORTS = {"http": 80, "https": 443}
#: Statuses a receiver uses to say "later", retried like server errors.
RETRY_LATER_STATUSES = frozenset({408, 425, 429})
#: First status of a success, and first of a server error.
FIRST_SUCCESS, FIRST_REDIRECT, FIRST_SERVER_ERROR = 200, 300, 500
#: Sent with every delivery.
USER_AGENT = "xicon-dance-webhooks"


def post(
    url: str, body: bytes, headers: dict[str, str], allow: AllowList, timeout_s: float,
    resolver: Resolver = system_resolver,
) -> int:
    """POST ``body`` to ``url``; returns the 2xx status or raises a ``webhook.*`` error.

    ``resolver`` looks the callback host up, once; only tests pass another one (a rebinding DNS server).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    shown = redact_url(url)
    try:
        address = pin_address(host, parts.port or DEFAULT_PORTS.get(parts.scheme, 80), allow, resolver)
    except DanceError as exc:
        code = WEBHOOK_BLOCKED if exc.code == INPUT_BLOCKED else WEBHOOK_UNREACHABLE
        raise error(code, f"callback {shown}: {exc.message}", url=shown, **exc.details) from None
    with Deadline(timeout_s) as deadline, requests.Session() as session:
        session.trust_env = False
        session.mount(f"{parts.scheme}://", PinnedAdapter(address, host, deadline))
        try:
            response = session.post(url, data=body, headers={"User-Agent": USER_AGENT, **headers},
                                    timeout=timeout_s, allow_redirects=False)
        except requests.Timeout:
            raise error(WEBHOOK_TIMEOUT, f"callback {shown} did not answer within {timeout_s:g}s", url=shown) from None
        except requests.RequestException as exc:
            code = WEBHOOK_TIMEOUT if deadline.expired else WEBHOOK_UNREACHABLE
            raise error(code, f"callback {shown} failed: {type(exc).__name__}", url=shown) from None
        status = response.status_code
        response.close()
    return _classify(status, shown)


def _classify(status: int, shown: str) -> int:
    if FIRST_SUCCESS <= status < FIRST_REDIRECT:
        return status
    if status >= FIRST_SERVER_ERROR or status in RETRY_LATER_STATUSES:
        raise error(WEBHOOK_SERVER_ERROR, f"callback {shown} answered {status}", url=shown, status=status)
    raise error(WEBHOOK_HTTP_ERROR, f"callback {shown} answered {status}", url=shown, status=status)

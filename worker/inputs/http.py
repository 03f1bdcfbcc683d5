"""Download one http(s) media URL to a file: guarded, pinned, capped, deadline-bound and retried.

* Every hop (the URL and each redirect) passes the SSRF guard and is dialled at the checked address.
* Redirects are followed by hand, at most MAX_REDIRECTS, and a URL seen twice is a loop. An https URL
  never leads to plain http: the next hop would travel in clear text (a signed query string with it) and
  could be rewritten on the way, so that redirect fails with ``input.insecure_redirect``.
* Certificates are checked against certifi's bundle, or ``FetchSettings.ca_bundle`` when a deployment
  serves media from hosts signed by its own authority.
* The size cap is checked on Content-Length before reading and again while streaming.
* One wall-clock deadline (``download_timeout_s``) covers the whole fetch, retries included.
* Transient failures (5xx, timeouts, refused or reset connections) are retried with the shared backoff;
  4xx never are.
* Environment proxies and ``.netrc`` are ignored (``trust_env`` off): a proxy would dial on our behalf
  and defeat the pinned address, and ``.netrc`` would hand our credentials to whatever host a job names.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests

from producer.errors import (
    INPUT_CORRUPT,
    INPUT_FORBIDDEN,
    INPUT_HTTP_ERROR,
    INPUT_INSECURE_REDIRECT,
    INPUT_NOT_FOUND,
    INPUT_REDIRECTS,
    INPUT_SCHEME,
    INPUT_SERVER_ERROR,
    INPUT_TIMEOUT,
    INPUT_TOO_LARGE,
    INPUT_UNREACHABLE,
    REQUEST_BAD_MEDIA_REF,
    DanceError,
    error,
)
from producer.redact import redact_url
from worker.backoff import Backoff
from worker.inputs.guard import AllowList, Resolver, pin_address, system_resolver
from worker.inputs.transport import Deadline, PinnedAdapter
from worker.settings import FetchSettings
from worker.storage.base import CHUNK_BYTES

#: Most redirects one download follows.
MAX_REDIRECTS = 5
#: First pause before retrying a transient failure, in seconds.
RETRY_BASE_S = 0.25
#: Longest pause between retries, in seconds.
RETRY_CAP_S = 5.0
#: Statuses that redirect when they carry a Location header.
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Statuses that mean the media is gone.
NOT_FOUND_STATUSES = frozenset({404, 410})
#: Statuses that mean the host refuses us.
FORBIDDEN_STATUSES = frozenset({401, 403})
#: The one success status a plain GET should get.
OK_STATUS = 200
#: First server-error status.
SERVER_ERROR_STATUS = 500
#: Default ports, for the Host header.
DEFAULT_PORTS = {"http": 80, "https": 443}
#: Sent with every request; ``identity`` so the cap applies to bytes as sent, not as inflated.
REQUEST_HEADERS = {"User-Agent": "xicon-dance-worker", "Accept-Encoding": "identity", "Accept": "*/*"}


def shown_url(url: str) -> str:
    """``url`` fit for errors and logs: no user:password, no query (signed-URL tokens live there)."""
    try:
        return redact_url(url)
    except ValueError:
        # urlsplit refuses some malformed URLs (a port out of range) only when asked for the port.
        return "<malformed URL>"


def download_http(url: str, dest: Path, settings: FetchSettings, resolver: Resolver = system_resolver) -> int:
    """Download ``url`` to ``dest``; returns its size in bytes. Raises ``input.*`` errors.

    ``resolver`` looks host names up, once per hop; only tests pass another one (a rebinding DNS server).
    """
    hop = _Hop(settings, AllowList.parse(settings.allow_hosts), resolver)
    backoff = Backoff(RETRY_BASE_S, RETRY_CAP_S)
    attempts = max(1, settings.attempts)
    with Deadline(settings.download_timeout_s) as deadline:
        for attempt in range(attempts):
            try:
                return _follow(url, dest, hop, deadline)
            except DanceError as exc:
                dest.unlink(missing_ok=True)
                delay_s = backoff.delay_s(attempt)
                last_try = attempt + 1 >= attempts or delay_s >= deadline.remaining_s()
                if not exc.retryable or last_try:
                    raise
                # A plain sleep: the fetch runs in the task's own thread and owns no other work.
                time.sleep(delay_s)
    raise AssertionError("unreachable: the last attempt always raises or returns")


@dataclass(frozen=True)
class _Hop:
    """What every hop of one download shares."""

    settings: FetchSettings
    allow: AllowList
    resolver: Resolver


def _follow(url: str, dest: Path, hop: _Hop, deadline: Deadline) -> int:
    seen: set[str] = set()
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        if current in seen:
            raise error(INPUT_REDIRECTS, "the media URL redirects in a loop", url=shown_url(url))
        seen.add(current)
        with _get(current, hop, deadline) as response:
            location = response.headers.get("Location") if response.status_code in REDIRECT_STATUSES else None
            if location is None:
                _raise_for_status(response.status_code, current)
                return _stream(response, dest, hop.settings, deadline, current)
        current = _redirect_target(current, location)
    raise error(INPUT_REDIRECTS, "the media URL redirects too often", url=shown_url(url), max=MAX_REDIRECTS)


def _redirect_target(current: str, location: str) -> str:
    target = urljoin(current, location)
    if urlsplit(current).scheme == "https" and urlsplit(target).scheme == "http":
        raise error(INPUT_INSECURE_REDIRECT, "the https media URL redirects to plain http",
                    url=shown_url(current), location=shown_url(target))
    return target


def _host_header(scheme: str, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == DEFAULT_PORTS[scheme] else f"{shown}:{port}"


def _target(url: str) -> tuple[str, str, int]:
    """Scheme, host and port of a hop, refusing anything but http(s)."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise error(INPUT_SCHEME, "media URLs must be http(s)", url=shown_url(url), scheme=parts.scheme)
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        port = 0
    if not parts.hostname or not port:
        raise error(REQUEST_BAD_MEDIA_REF, "the media URL has no usable host or port", url=shown_url(url))
    return parts.scheme, parts.hostname, port


@contextlib.contextmanager
def _get(url: str, hop: _Hop, deadline: Deadline) -> Iterator[requests.Response]:
    scheme, host, port = _target(url)
    address = pin_address(host, port, hop.allow, hop.resolver)
    settings = hop.settings
    if deadline.expired:
        raise error(INPUT_TIMEOUT, "the download ran out of time", url=shown_url(url))
    with requests.Session() as session:
        session.trust_env = False
        if settings.ca_bundle is not None:
            session.verify = str(settings.ca_bundle)
        session.mount(f"{scheme}://", PinnedAdapter(address, host, deadline))
        headers = {**REQUEST_HEADERS, "Host": _host_header(scheme, host, port)}
        timeout = (min(settings.connect_timeout_s, deadline.remaining_s()), deadline.remaining_s())
        try:
            response = session.get(url, headers=headers, stream=True, allow_redirects=False, timeout=timeout)
        except requests.RequestException as exc:
            raise _transport_error(exc, url, deadline) from None
        with response:
            yield response


def _raise_for_status(status: int, url: str) -> None:
    shown = shown_url(url)
    if status == OK_STATUS:
        return
    if status in NOT_FOUND_STATUSES:
        raise error(INPUT_NOT_FOUND, "the media URL does not exist", url=shown, status=status)
    if status in FORBIDDEN_STATUSES:
        raise error(INPUT_FORBIDDEN, "the media host denied access", url=shown, status=status)
    if status >= SERVER_ERROR_STATUS:
        raise error(INPUT_SERVER_ERROR, "the media host failed", url=shown, status=status)
    raise error(INPUT_HTTP_ERROR, "the media host answered with an unusable status", url=shown, status=status)


def _check_declared_length(response: requests.Response, settings: FetchSettings, url: str) -> None:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > settings.max_download_bytes:
        raise error(
            INPUT_TOO_LARGE, "the media is larger than the download cap", url=shown_url(url),
            declared_bytes=int(declared), max_bytes=settings.max_download_bytes,
        )


def _stream(
    response: requests.Response, dest: Path, settings: FetchSettings, deadline: Deadline, url: str
) -> int:
    _check_declared_length(response, settings, url)
    size = 0
    try:
        with dest.open("wb") as out:
            for chunk in response.iter_content(CHUNK_BYTES):
                size += len(chunk)
                if size > settings.max_download_bytes:
                    raise error(
                        INPUT_TOO_LARGE, "the media is larger than the download cap",
                        url=shown_url(url), max_bytes=settings.max_download_bytes,
                    )
                out.write(chunk)
    except requests.RequestException as exc:
        raise _transport_error(exc, url, deadline) from None
    # A deadline cut looks like the end of a body sent without Content-Length: check which it was.
    if deadline.expired:
        raise error(INPUT_TIMEOUT, "the download ran out of time", url=shown_url(url))
    return size


def _transport_error(exc: requests.RequestException, url: str, deadline: Deadline) -> DanceError:
    """The ``input.*`` error for a failed connection or read; ``from None`` above keeps URLs out of logs."""
    shown = shown_url(url)
    cause = type(exc).__name__
    if deadline.expired or isinstance(exc, requests.Timeout) or "timed out" in str(exc).lower():
        return error(INPUT_TIMEOUT, "the download timed out", url=shown, cause=cause)
    if isinstance(exc, requests.exceptions.ContentDecodingError):
        return error(INPUT_CORRUPT, "the media host sent a body that does not decode", url=shown, cause=cause)
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema)):
        return error(REQUEST_BAD_MEDIA_REF, "the media URL is malformed", url=shown, cause=cause)
    return error(INPUT_UNREACHABLE, "the media host refused or dropped the link", url=shown, cause=cause)

"""How a download connects: only to the address the SSRF guard checked, and never past its deadline.

Pinning. :class:`PinnedAdapter` hands urllib3 the checked IP address as the host to dial, while the
request keeps the original host name in its ``Host`` header and, for https, in SNI and certificate
verification. A DNS answer that changes between the check and the connect (DNS rebinding) therefore
cannot move the connection elsewhere.

Deadline. A socket timeout bounds a single ``recv``; a host that trickles one byte a second never trips
it. :class:`Deadline` records every socket a download opens and, when the wall-clock deadline passes,
shuts them down from a timer thread. That wakes the blocked read at once, wherever it is: connecting,
reading headers or reading the body.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

from requests import PreparedRequest
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool


class Deadline:
    """A wall-clock deadline that cuts the sockets registered with it when it passes."""

    def __init__(self, timeout_s: float) -> None:
        self.at = time.monotonic() + timeout_s
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._expired = threading.Event()
        self._timer = threading.Timer(timeout_s, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()

    @property
    def expired(self) -> bool:
        return self._expired.is_set() or time.monotonic() >= self.at

    def remaining_s(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        """Cut ``sock`` when the deadline passes (at once if it already has)."""
        with self._lock:
            self._sockets.append(sock)
            expired = self._expired.is_set()
        if expired:
            _cut(sock)

    def _expire(self) -> None:
        with self._lock:
            self._expired.set()
            sockets = list(self._sockets)
        for sock in sockets:
            _cut(sock)


def _cut(sock: socket.socket) -> None:
    # The socket may already be closed by its owner; a cut that finds nothing to cut is fine.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _watched(base: type[HTTPConnection], deadline: Deadline) -> type[HTTPConnection]:
    """``base`` with a ``connect`` that registers its socket with ``deadline``."""

    class Watched(base):  # type: ignore[valid-type,misc]
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    return Watched


class PinnedAdapter(HTTPAdapter):
    """Dials ``address`` for every request, keeping ``hostname`` for Host, SNI and certificate checks."""

    def __init__(self, address: str, hostname: str, deadline: Deadline) -> None:
        super().__init__(max_retries=0)
        self._address = address
        self._hostname = hostname
        self._deadline = deadline

    def get_connection_with_tls_context(
        self, request: PreparedRequest, verify: Any, proxies: Any = None, cert: Any = None
    ) -> HTTPConnectionPool:
        host_attrs, pool_attrs = self.build_connection_pool_key_attributes(request, verify, cert)
        host_params: dict[str, Any] = {**host_attrs, "host": self._address}
        pool_kwargs: dict[str, Any] = dict(pool_attrs)
        base: type[HTTPConnection] = HTTPConnection
        if host_params.get("scheme") == "https":
            pool_kwargs["server_hostname"] = self._hostname
            pool_kwargs["assert_hostname"] = self._hostname
            base = HTTPSConnection
        pool: HTTPConnectionPool = self.poolmanager.connection_from_host(**host_params, pool_kwargs=pool_kwargs)
        # One adapter serves one hop, so its pools are its own and may carry the watched class.
        pool.ConnectionCls = _watched(base, self._deadline)
        return pool

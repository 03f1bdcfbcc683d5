"""A real threaded HTTP server on 127.0.0.1 that serves model-like files with HTTP Range, and breaks on request.

The suite's media server answers whole bodies only; model downloads need ``Range: bytes=N-`` and a body that
stops short on purpose. Each path gets a :class:`Blob`. The server records the Range header of every
request per path, so a test can assert that a download resumed where it stopped.
"""

from __future__ import annotations

import re
import socket
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

#: How often the serving loop checks for shutdown, in seconds.
SHUTDOWN_POLL_S = 0.02
_RANGE = re.compile(r"bytes=(\d+)-$")


@dataclass
class Blob:
    """What one path serves, and how it misbehaves first."""

    body: bytes
    #: Answer ``fail_status`` to this many requests before serving.
    fail_times: int = 0
    fail_status: int = 503
    #: Stop this many responses after ``cut_after_bytes`` body bytes and close the connection.
    cut_times: int = 0
    cut_after_bytes: int = 0
    #: Answer 200 with the whole body even when a Range is asked (servers may).
    ignore_range: bool = False
    #: A status other than 200 to answer every request with (a 404, say).
    status: int = 200


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    blobs: dict[str, Blob]
    ranges: defaultdict[str, list[str | None]]
    lock: threading.Lock

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        # The downloader under test hangs up on purpose (a checksum or length it refuses); a reset is no bug.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the recorded ranges are what tests read."""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        asked = self.headers.get("Range")
        with self.server.lock:
            self.server.ranges[path].append(asked)
            count = len(self.server.ranges[path])
        blob = self.server.blobs.get(path)
        try:
            self._answer(blob, asked, count)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _answer(self, blob: Blob | None, asked: str | None, count: int) -> None:
        if blob is None or blob.status != 200:
            self._send(404 if blob is None else blob.status, b"no\n")
        elif count <= blob.fail_times:
            self._send(blob.fail_status, b"scripted failure\n")
        else:
            match = _RANGE.match(asked or "")
            start = int(match.group(1)) if match and not blob.ignore_range else None
            self._send_body(blob, start, cut=count <= blob.fail_times + blob.cut_times)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_body(self, blob: Blob, start: int | None, cut: bool) -> None:
        total = len(blob.body)
        if start is not None and start >= total:
            self._send(416, b"", {"Content-Range": f"bytes */{total}"})
            return
        body = blob.body if start is None else blob.body[start:]
        self.send_response(200 if start is None else 206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        self.end_headers()
        if not cut:
            self.wfile.write(body)
            return
        # Announce the whole length, send a prefix, then end the connection cleanly: the client reads the
        # prefix and then meets end-of-stream short of Content-Length, as after a proxy or network cut.
        self.wfile.write(body[: blob.cut_after_bytes])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_WR)


class RangeServer:
    """The running server: register blobs, build URLs, read the Range headers each path received."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.blobs = {}
        self._server.ranges = defaultdict(list)
        self._server.lock = threading.Lock()
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(SHUTDOWN_POLL_S,), name="range-server", daemon=True
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, blob: Blob) -> str:
        with self._server.lock:
            self._server.blobs[path] = blob
        return self.url(path)

    def ranges(self, path: str) -> list[str | None]:
        """The Range header of each request to ``path`` so far (None where there was none)."""
        with self._server.lock:
            return list(self._server.ranges[path])

    def start(self) -> RangeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def range_server() -> Iterator[RangeServer]:
    server = RangeServer().start()
    try:
        yield server
    finally:
        server.stop()

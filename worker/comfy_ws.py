"""ComfyUI's WebSocket, as a stream of JSON events for one client id that survives drops.

Protocol facts this relies on (shared/comfyui-protocol/README.md):

* every targeted message goes to the socket registered under the ``client_id`` that submitted the
  prompt, so a reconnect must reuse that id;
* when an old socket with the same id closes *after* a new one registered, ComfyUI drops the new
  registration (19_two_clients): the old socket is therefore always closed before reconnecting;
* binary frames (previews) and unknown message types are ignored.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import websocket

from producer.errors import COMFY_UNREACHABLE, error

log = logging.getLogger(__name__)

#: Timeout of the WebSocket handshake, in seconds.
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Event:
    type: str
    data: dict[str, Any]


def ws_url(base_url: str, client_id: str) -> str:
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = parts.path.rstrip("/") + "/ws"
    return urlunsplit((scheme, parts.netloc, path, f"clientId={client_id}", ""))


class EventSocket:
    """One client id's socket. :meth:`recv` returns an Event, None on a quiet period, or raises
    ``comfyui.unreachable`` when the socket is lost (the caller decides whether to reconnect)."""

    def __init__(self, base_url: str, client_id: str) -> None:
        self.url = ws_url(base_url, client_id)
        self.client_id = client_id
        self._ws: websocket.WebSocket | None = None

    @property
    def connected(self) -> bool:
        return self._ws is not None and bool(self._ws.connected)

    def connect(self) -> None:
        self.close()
        try:
            # websocket-client checks every text frame's UTF-8 in a pure-Python loop, byte by byte (about
            # 2.5 ms of CPU a job, taken from ComfyUI on a shared host); the strict decode below checks it too.
            self._ws = websocket.create_connection(self.url, timeout=CONNECT_TIMEOUT_S, enable_multithread=True,
                                                   skip_utf8_validation=True)
        except (OSError, websocket.WebSocketException) as exc:
            self._ws = None
            raise error(
                COMFY_UNREACHABLE, f"ComfyUI WebSocket refused: {type(exc).__name__}", reason=type(exc).__name__
            ) from exc

    def recv(self, timeout_s: float) -> Event | None:
        if self._ws is None:
            raise error(COMFY_UNREACHABLE, "ComfyUI WebSocket is not connected", reason="not_connected")
        self._ws.settimeout(max(timeout_s, 0.01))
        try:
            opcode, frame = self._ws.recv_data()
        except (TimeoutError, websocket.WebSocketTimeoutException):
            return None
        except (OSError, websocket.WebSocketException) as exc:
            # websocket-client raises WebSocketConnectionClosedException ~0.1 s after a kill -9
            # (20_kill9_mid_run.json).
            self.close()
            raise error(
                COMFY_UNREACHABLE, f"ComfyUI WebSocket lost: {type(exc).__name__}", reason=type(exc).__name__
            ) from exc
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self.close()
            raise error(COMFY_UNREACHABLE, "ComfyUI closed the WebSocket", reason="close_frame")
        if opcode == websocket.ABNF.OPCODE_TEXT:
            return _decode(frame)
        return None  # binary preview frames (06_preview_and_websocket_image)

    def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                self._ws.close(timeout=1)
            self._ws = None


def _decode(frame: str | bytes) -> Event | None:
    if not frame:
        return None
    try:
        # A frame that is not UTF-8 fails here (UnicodeDecodeError is a ValueError), as it failed
        # websocket-client's own check before.
        message = json.loads(frame.decode("utf-8") if isinstance(frame, bytes) else frame)
    except ValueError:
        log.warning("ignoring a WebSocket frame from ComfyUI that is not UTF-8 JSON")
        return None
    if not isinstance(message, dict) or not isinstance(message.get("data"), dict):
        return None
    return Event(type=str(message.get("type")), data=message["data"])

"""WebSocket sessions and message delivery, the way ComfyUI's PromptServer does it.

Any thread may call :meth:`Messenger.send_sync`; frames go through one asyncio queue that a single publish
loop drains, so they reach sockets in the order they were produced. A frame with ``sid=None`` goes to every
socket (``status``), otherwise only to the socket registered under that client id.

Registration quirks kept on purpose (19_two_clients):
- connecting with a clientId that is already registered replaces the old socket in the map;
- when any socket closes, the entry under its clientId is removed, even if a newer socket had taken it
  over, so the newer socket silently stops receiving anything (targeted or broadcast).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import struct
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image, ImageOps

log = logging.getLogger("simulator.messages")

#: Binary frame event types (server.BinaryEventTypes).
PREVIEW_IMAGE = 1
UNENCODED_PREVIEW_IMAGE = 2
#: Image format codes in a preview frame's second word.
IMAGE_FORMAT_CODES = {"JPEG": 1, "PNG": 2}
#: Marker put on the frame queue to close every socket abruptly (the drop_websockets fault).
DROP_ALL_SOCKETS = "__sim_drop_all_sockets__"

SEND_ERRORS = (
    aiohttp.ClientError,
    aiohttp.ClientPayloadError,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionError,
    RuntimeError,
)


class Messenger:
    """Socket registry plus the thread-safe frame queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue_info: Callable[[], dict[str, Any]]) -> None:
        self._loop = loop
        self._queue_info = queue_info
        self._frames: asyncio.Queue[tuple[Any, Any, str | None]] = asyncio.Queue()
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self._transports: dict[int, asyncio.BaseTransport | None] = {}
        #: Client id of the prompt being executed, or None (server.client_id).
        self.client_id: str | None = None
        #: Display id of the node last announced with ``executing`` (server.last_node_id).
        self.last_node_id: str | None = None

    def send_sync(self, event: Any, data: Any, sid: str | None = None) -> None:
        self._loop.call_soon_threadsafe(self._frames.put_nowait, (event, data, sid))

    def queue_updated(self) -> None:
        self.send_sync("status", {"status": self._queue_info()})

    async def publish_loop(self) -> None:
        while True:
            event, data, sid = await self._frames.get()
            if event == DROP_ALL_SOCKETS:
                self._abort_all()
                continue
            await self.send(event, data, sid)

    async def send(self, event: Any, data: Any, sid: str | None = None) -> None:
        if event == UNENCODED_PREVIEW_IMAGE:
            await self._send_image(data, sid)
        elif isinstance(data, bytes | bytearray):
            await self._send_bytes(int(event), bytes(data), sid)
        else:
            await self._send_json(event, data, sid)

    async def _send_image(self, image_data: tuple[str, Image.Image, int | None], sid: str | None) -> None:
        image_type, image, max_size = image_data
        if max_size is not None:
            image = ImageOps.contain(image, (max_size, max_size), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        buffer.write(struct.pack(">I", IMAGE_FORMAT_CODES.get(image_type, 1)))
        image.save(buffer, format=image_type, quality=95, compress_level=1)
        await self._send_bytes(PREVIEW_IMAGE, buffer.getvalue(), sid)

    async def _send_bytes(self, event: int, data: bytes, sid: str | None) -> None:
        message = struct.pack(">I", event) + data
        for ws in self._targets(sid):
            await _send_quietly(ws.send_bytes, message)

    async def _send_json(self, event: Any, data: Any, sid: str | None) -> None:
        message = {"type": event, "data": data}
        for ws in self._targets(sid):
            await _send_quietly(ws.send_str, json.dumps(message))

    def _targets(self, sid: str | None) -> list[web.WebSocketResponse]:
        if sid is None:
            return list(self.sockets.values())
        ws = self.sockets.get(sid)
        return [] if ws is None else [ws]

    def _abort_all(self) -> None:
        # transport.abort() drops the TCP connection with no close frame: clients see what a network
        # cut or a crash looks like (close code 1006), while the prompt keeps running.
        for ws in list(self.sockets.values()):
            transport = self._transports.get(id(ws))
            if isinstance(transport, asyncio.Transport):
                transport.abort()

    async def handle_ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            self.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        self.sockets[sid] = ws
        self._transports[id(ws)] = request.transport
        try:
            await self.send("status", {"status": self._queue_info(), "sid": sid}, sid)
            # A client that reconnects while its prompt runs learns the current node (without prompt_id).
            if self.client_id == sid and self.last_node_id is not None:
                await self.send("executing", {"node": self.last_node_id}, sid)
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.ERROR:
                    log.warning("ws connection closed with exception %s", ws.exception())
        finally:
            # Deliberately by clientId, not by socket identity: this is the quirk of 19_two_clients.
            self.sockets.pop(sid, None)
            self._transports.pop(id(ws), None)
        return ws

    def drop_all_sockets_sync(self) -> None:
        """Queue an abrupt close of every socket behind the frames already queued."""
        self.send_sync(DROP_ALL_SOCKETS, None)


async def _send_quietly(send: Callable[[Any], Any], message: Any) -> None:
    # ComfyUI logs and swallows send errors (send_socket_catch_exception): one dead socket must not
    # stop delivery to the others.
    with contextlib.suppress(*SEND_ERRORS):
        await send(message)

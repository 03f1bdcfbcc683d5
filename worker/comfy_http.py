"""HTTP client for ComfyUI's API (0.3.39 as recorded in shared/comfyui-protocol, 0.12.3 in
shared/comfyui-protocol-0.12.3).

Every failure leaves as an error of the project tree: a refused or dropped connection is
``comfyui.unreachable``, an answer slower than the timeout ``comfyui.timeout`` (both retryable), a
rejected prompt is permanent with ComfyUI's per-node details.
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from producer.errors import (
    COMFY_NODE_ERRORS,
    COMFY_PROMPT_REJECTED,
    COMFY_PROTOCOL,
    COMFY_TIMEOUT,
    COMFY_UNREACHABLE,
    DanceError,
    error,
)
from worker.storage.base import Readable

#: Bytes per chunk when streaming a file from /view.
VIEW_CHUNK_BYTES = 1 << 20
HTTP_OK, HTTP_BAD_REQUEST, HTTP_SERVER_ERROR = 200, 400, 500
#: Timeout of a readiness probe request, in seconds: short, so a hung ComfyUI is noticed.
PROBE_TIMEOUT_S = 2.0
#: The oldest ComfyUI recorded honouring ``POST /interrupt {"prompt_id": X}`` (21_interrupt_by_prompt_id);
#: 0.3.39 ignores the body and stops whatever runs (recordings/d_interrupt_body_ignored).
TARGETED_INTERRUPT_SINCE = (0, 12, 3)


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.12.3"`` -> ``(0, 12, 3)``; a part that is not a number ends the tuple (``"0.4.0rc1"`` -> ``(0, 4)``)."""
    parts: list[int] = []
    for part in version.lstrip("v").split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


@dataclass(frozen=True)
class Submitted:
    prompt_id: str
    number: int
    #: Non-empty when ComfyUI accepted the prompt but dropped part of the graph; see queue_prompt.
    rejection: DanceError | None = None


@dataclass(frozen=True)
class OutputFile:
    """One file a node reported in ``executed.output`` / history ``outputs``."""

    node_id: str
    key: str  # images, gifs, animated, videos, ...
    filename: str
    subfolder: str
    type: str  # output or temp
    format: str | None = None


class ComfyHttp:
    """A thin, typed wrapper over ComfyUI's REST endpoints."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        #: What /system_stats reported when ComfyUI last became ready (see :meth:`learn_version`).
        self.comfyui_version: str | None = None
        #: Whether ``POST /interrupt`` takes ``{"prompt_id": X}`` and stops only X; False until learned.
        self.targeted_interrupt = False

    def learn_version(self, stats: dict[str, Any]) -> None:
        """Record the capabilities of the ComfyUI that answered ``stats``; called once per ComfyUI start."""
        system = stats.get("system")
        version = str(system.get("comfyui_version") or "") if isinstance(system, dict) else ""
        self.comfyui_version = version or None
        self.targeted_interrupt = version_tuple(version) >= TARGETED_INTERRUPT_SINCE

    def close(self) -> None:
        self.session.close()

    # Reads ------------------------------------------------------------------------------------------
    def system_stats(self, timeout_s: float | None = None) -> dict[str, Any]:
        return self._json("GET", "/system_stats", timeout_s=timeout_s)

    def object_info(self, timeout_s: float | None = None) -> dict[str, Any]:
        return self._json("GET", "/object_info", timeout_s=timeout_s)

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of ``prompt_id``, or None while ComfyUI has none (ComfyUI answers ``{}``)."""
        body = self._json("GET", f"/history/{prompt_id}")
        entry = body.get(prompt_id)
        return entry if isinstance(entry, dict) else None

    def recent_history(self, max_items: int) -> dict[str, Any]:
        """The newest ``max_items`` history entries, by prompt id."""
        return self._json("GET", f"/history?max_items={max_items}")

    def queue(self, timeout_s: float | None = None) -> dict[str, Any]:
        return self._json("GET", "/queue", timeout_s=timeout_s)

    # Writes -----------------------------------------------------------------------------------------
    def upload_image(self, path: Path, name: str) -> str:
        """Upload ``path`` as input ``name`` (replacing any file of that name); returns the name to bind.

        POST /upload/image accepts videos too: it stores any bytes under the input folder.
        """
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        with path.open("rb") as handle:
            files = {"image": (name, handle, content_type)}
            data = {"overwrite": "true", "type": "input"}
            response = self._request("POST", "/upload/image", files=files, data=data)
        body = self._decode(response, "/upload/image")
        subfolder = str(body.get("subfolder") or "")
        stored = str(body.get("name") or name)
        return f"{subfolder}/{stored}" if subfolder else stored

    def queue_prompt(self, prompt: dict[str, Any], client_id: str, extra: dict[str, Any]) -> Submitted:
        """POST /prompt. A 400 raises ``comfyui.prompt_rejected``.

        ComfyUI accepts a prompt with HTTP 200 as long as one output node validates, silently
        dropping the rest (10_validation_errors.json, case partial_valid_outputs). That prompt is
        queued all the same, so it comes back with ``rejection`` set: the caller must stop it, then
        fail the job with the rejection.
        """
        body = {"prompt": prompt, "client_id": client_id, "extra_data": extra}
        response = self._request("POST", "/prompt", json=body)
        if response.status_code == HTTP_BAD_REQUEST:
            payload = _json_or_none(response) or {}
            raise _rejected(COMFY_PROMPT_REJECTED, payload)
        payload = self._decode(response, "/prompt")
        rejection = _rejected(COMFY_NODE_ERRORS, payload) if payload.get("node_errors") else None
        try:
            return Submitted(prompt_id=str(payload["prompt_id"]), number=int(payload["number"]), rejection=rejection)
        except (KeyError, TypeError, ValueError):
            raise error(COMFY_PROTOCOL, "POST /prompt answered without a prompt_id", body=str(payload)[:500]) from None

    def interrupt(self, prompt_id: str | None = None, timeout_s: float | None = None) -> None:
        """Interrupt ``prompt_id`` only if it runs (where :attr:`targeted_interrupt`), else whatever runs.

        Without the capability the id is not sent: 0.3.39 ignores it anyway, and a caller must then check
        that the running prompt is its own first.
        """
        body = {"prompt_id": prompt_id} if prompt_id and self.targeted_interrupt else {}
        self._request("POST", "/interrupt", json=body, timeout_s=timeout_s)

    def delete_queued(self, prompt_ids: list[str], timeout_s: float | None = None) -> None:
        self._request("POST", "/queue", json={"delete": prompt_ids}, timeout_s=timeout_s)

    def delete_history(self, prompt_ids: list[str]) -> None:
        self._request("POST", "/history", json={"delete": prompt_ids})

    @contextlib.contextmanager
    def view(self, item: OutputFile) -> Iterator[Readable]:
        """Stream one output file: yields a readable that never holds the whole body."""
        params = {"filename": item.filename, "subfolder": item.subfolder, "type": item.type}
        response = self._request("GET", "/view", params=params, stream=True)
        try:
            if response.status_code != HTTP_OK:
                raise error(
                    COMFY_PROTOCOL, f"GET /view for {item.filename} answered {response.status_code}",
                    status=response.status_code, filename=item.filename, subfolder=item.subfolder,
                )
            response.raw.decode_content = True
            body: Readable = response.raw
            yield body
        finally:
            response.close()

    # Plumbing ---------------------------------------------------------------------------------------
    def _json(self, method: str, path: str, timeout_s: float | None = None) -> dict[str, Any]:
        return self._decode(self._request(method, path, timeout_s=timeout_s), path)

    def _request(self, method: str, path: str, timeout_s: float | None = None, **kwargs: Any) -> requests.Response:
        url = self.base_url + path
        try:
            return self.session.request(method, url, timeout=timeout_s or self.timeout_s, **kwargs)
        except requests.Timeout as exc:
            # Also a connect timeout: nothing refused us, so ComfyUI may be alive and running our prompt.
            raise error(
                COMFY_TIMEOUT, f"ComfyUI at {self.base_url} did not answer {path} within "
                f"{timeout_s or self.timeout_s:g}s", url=self.base_url, path=path, reason=type(exc).__name__,
            ) from exc
        except requests.RequestException as exc:
            # Covers refused, reset (a kill -9 shows first as ConnectionResetError(104), then as
            # refused: 20_kill9_mid_run.json).
            raise error(
                COMFY_UNREACHABLE, f"ComfyUI at {self.base_url} is unreachable: {type(exc).__name__}",
                url=self.base_url, path=path, reason=type(exc).__name__,
            ) from exc

    def _decode(self, response: requests.Response, path: str) -> dict[str, Any]:
        if response.status_code >= HTTP_SERVER_ERROR:
            raise error(
                COMFY_PROTOCOL, f"ComfyUI answered {response.status_code} to {path}",
                status=response.status_code, path=path, body=response.text[:500],
            )
        payload = _json_or_none(response)
        if response.status_code != HTTP_OK or not isinstance(payload, dict):
            raise error(
                COMFY_PROTOCOL, f"ComfyUI answered {response.status_code} with no JSON object to {path}",
                status=response.status_code, path=path, body=response.text[:500],
            )
        return payload


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except (ValueError, json.JSONDecodeError):
        return None


def _rejected(code: str, payload: dict[str, Any]) -> DanceError:
    raw_top = payload.get("error")
    top: dict[str, Any] = raw_top if isinstance(raw_top, dict) else {}
    nodes = summarize_node_errors(payload.get("node_errors") or {})
    head = str(top.get("message") or "ComfyUI rejected part of the workflow")
    first = next(iter(nodes.values()), None)
    if first and first["errors"]:
        head += f": node {next(iter(nodes))} ({first['class_type']}): {first['errors'][0]['message']}"
        head += f" ({first['errors'][0]['details']})" if first["errors"][0]["details"] else ""
    return error(code, head, type=top.get("type"), error_details=top.get("details"), nodes=nodes)


def summarize_node_errors(node_errors: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's per-node errors, keeping what a user needs (type, message, details) per node."""
    nodes: dict[str, Any] = {}
    for node_id, entry in node_errors.items():
        if not isinstance(entry, dict):
            continue
        errors = [
            {"type": e.get("type"), "message": e.get("message"), "details": e.get("details")}
            for e in entry.get("errors", []) if isinstance(e, dict)
        ]
        nodes[str(node_id)] = {"class_type": entry.get("class_type"), "errors": errors}
    return nodes

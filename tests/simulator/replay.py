"""Replaying recorded ComfyUI exchanges against the simulator and comparing what comes back.

Values that legitimately differ between two runs are rewritten to placeholders before comparing:
prompt ids become ``<id:N>`` in order of first appearance (so the same id must appear in the same places),
timestamps ``<ts>``, tracebacks ``<traceback>``, hashes ``<sha256>``, object reprs ``<object>``, the
input folder ``<input>/`` and PreviewImage's random prefix ``ComfyUI_temp_XXXXX_``. Sets that ComfyUI
serialises in hash order (``executed``, ``current_outputs``) are sorted. Everything else must be equal.
"""

from __future__ import annotations

import difflib
import json
import re
import struct
from pathlib import Path
from typing import Any

import requests

from tests.fixtures.comfysim import Frame

HERE = Path(__file__).resolve().parent
#: Where the transcripts live: those recorded here (a-g), a copy of the project's recorded protocol
#: (shared/comfyui-protocol, ComfyUI 0.3.39) and of the 0.12.3 transcripts the simulator's --version 0.12.3
#: is checked against (shared/comfyui-protocol-0.12.3: 21, 22), kept beside the tests so a clean clone has them.
RECORDING_DIRS = (HERE / "recordings", HERE / "recordings" / "protocol", HERE / "recordings" / "protocol-0.12.3")
#: Timeout of one replayed HTTP request, in seconds.
HTTP_TIMEOUT_S = 30.0

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
HEX_SID_RE = re.compile(r"^[0-9a-f]{32}$")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
OBJECT_RE = re.compile(r"<[^<>]* at 0x[0-9a-f]+>")
TEMP_PREFIX_RE = re.compile(r"ComfyUI_temp_[a-z]{5}_")
RECORDED_INPUT_DIR = "/opt/ComfyUI/input/"
#: Keys whose values ComfyUI fills from a Python set.
SET_VALUED_KEYS = frozenset({"executed", "current_outputs"})


def recording(name: str) -> Any:
    for folder in RECORDING_DIRS:
        path = folder / name
        if path.exists():
            if name.endswith(".jsonl"):
                return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            return json.loads(path.read_text())
    raise FileNotFoundError(f"no recording {name} in {[str(d) for d in RECORDING_DIRS]}")


class Normalizer:
    """One side of a comparison; keeps the id numbering consistent across everything it sees."""

    def __init__(self, input_dir: str = RECORDED_INPUT_DIR) -> None:
        self.input_dir = input_dir.rstrip("/") + "/"
        self.ids: dict[str, str] = {}

    def __call__(self, value: Any, key: str | None = None) -> Any:
        if isinstance(value, dict):
            return {self._key(k): self(v, k) for k, v in value.items()}
        if isinstance(value, list):
            items = [self(v) for v in value]
            return sorted(items, key=json.dumps) if key in SET_VALUED_KEYS else items
        if key == "timestamp" and isinstance(value, int):
            return "<ts>"
        if isinstance(value, str):
            return self._string(value, key)
        return value

    def _key(self, key: str) -> str:
        return self.ids.setdefault(key, f"<id:{len(self.ids)}>") if UUID_RE.match(key) else key

    def _string(self, value: str, key: str | None) -> Any:
        if UUID_RE.match(value):
            return self.ids.setdefault(value, f"<id:{len(self.ids)}>")
        if key == "sid" and HEX_SID_RE.match(value):
            return "<generated-sid>"
        value = value.replace(self.input_dir, "<input>/")
        value = SHA256_RE.sub("<sha256>", value)
        value = OBJECT_RE.sub("<object>", value)
        return TEMP_PREFIX_RE.sub("ComfyUI_temp_XXXXX_", value)

    def tracebacks(self, value: Any) -> Any:
        """Replace every ``traceback`` list (frames of a different program) after checking its shape."""
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if k == "traceback":
                    assert isinstance(v, list) and all(isinstance(line, str) for line in v), v
                    out[k] = "<traceback>"
                else:
                    out[k] = self.tracebacks(v)
            return out
        if isinstance(value, list):
            return [self.tracebacks(v) for v in value]
        return value

    def full(self, value: Any) -> Any:
        return self(self.tracebacks(value))


def exchange(base_url: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """Send one request and capture what the transcripts record of a response."""
    response = requests.request(method, base_url + path, timeout=HTTP_TIMEOUT_S, **kwargs)
    captured: dict[str, Any] = {
        "status": response.status_code,
        "content_type": response.headers.get("Content-Type", ""),
        "content_length": len(response.content),
        "headers": dict(response.headers),
        "magic_hex": response.content[:16].hex(),
    }
    if captured["content_type"].startswith("application/json"):
        captured["json"] = response.json()
    elif captured["content_type"].startswith("text/plain"):
        captured["text"] = response.text
    return captured


def replay_request(base_url: str, recorded: dict[str, Any]) -> dict[str, Any]:
    """Send a recorded request as recorded (JSON body or raw body)."""
    kwargs: dict[str, Any] = {}
    if "request_json" in recorded:
        kwargs["json"] = recorded["request_json"]
    elif "request_raw" in recorded:
        kwargs["data"] = recorded["request_raw"].encode()
        kind = "application/x-www-form-urlencoded" if "=" in recorded["request_raw"] else "application/json"
        kwargs["headers"] = {"Content-Type": kind}
    return exchange(base_url, recorded["method"], recorded["path"], **kwargs)


def assert_same_response(
    actual: dict[str, Any],
    recorded: dict[str, Any],
    mine: Normalizer,
    theirs: Normalizer,
    *,
    compare_json: bool = True,
) -> None:
    """Status, content type and (normalised) body of ``actual`` match the recorded exchange."""
    expected = recorded["response"]
    where = f"{recorded.get('method')} {recorded.get('path')} ({recorded.get('note', '')})"
    assert actual["status"] == recorded["status"], where
    assert actual["content_type"] == expected["content_type"], where
    if "json" in expected and compare_json:
        assert_equal(mine.full(actual["json"]), theirs.full(expected["json"]), where)
    if "text" in expected:
        assert actual["text"] == expected["text"], where
    if expected.get("content_length") == 0:
        assert actual["content_length"] == 0, where
    if expected.get("magic_hex"):
        assert same_magic(actual["magic_hex"], expected["magic_hex"]), (where, actual["magic_hex"])


def assert_equal(actual: Any, expected: Any, where: str) -> None:
    """Equality with a readable unified diff of the two JSON documents on failure."""
    if actual == expected:
        return
    got = json.dumps(actual, indent=1, default=str).splitlines()
    want = json.dumps(expected, indent=1, default=str).splitlines()
    diff = "\n".join(difflib.unified_diff(want, got, "recorded", "simulator", lineterm="", n=2))
    raise AssertionError(f"{where} differs:\n{diff[:6000]}")


def same_magic(actual_hex: str, expected_hex: str) -> bool:
    """Same file signature; RIFF containers carry their size in bytes 4..8, so those are skipped."""
    if expected_hex.startswith("52494646"):
        return actual_hex[:8] == expected_hex[:8] and actual_hex[16:32] == expected_hex[16:32]
    return actual_hex[:16] == expected_hex[:16]


def frame_record(frame: Frame) -> dict[str, Any]:
    """A received frame in the transcripts' shape; binary frames keep event type, format and image size."""
    if frame.json is not None:
        return {"json": frame.json}
    data = frame.binary or b""
    event_type, format_code = struct.unpack(">II", data[:8])
    width, height = struct.unpack(">II", data[8 + 16 : 8 + 24])
    return {"binary": {"event_type": event_type, "image_format_code": format_code, "image_size": [width, height]}}


def recorded_frame(entry: dict[str, Any]) -> dict[str, Any]:
    if "json" in entry:
        return {"json": entry["json"]}
    binary = entry["binary"]
    return {"binary": {k: binary[k] for k in ("event_type", "image_format_code", "image_size")}}


def assert_same_frames(
    actual: list[Frame], recorded: list[dict[str, Any]], mine: Normalizer, theirs: Normalizer
) -> None:
    got = [mine.full(frame_record(f)) for f in actual]
    want = [theirs.full(recorded_frame(e)) for e in recorded]
    assert [_kind(f) for f in got] == [_kind(f) for f in want]
    assert_equal(got, want, "websocket frames")


def _kind(record: dict[str, Any]) -> str:
    return str(record["json"]["type"]) if "json" in record else "<binary>"


def frame_types(frames: list[Frame]) -> list[str]:
    return [f.type for f in frames]


def collapse_progress(types: list[str]) -> list[str]:
    """Merge runs of ``progress``: how many ticks arrive before an interrupt is timing, not protocol."""
    out: list[str] = []
    for kind in types:
        if not (kind == "progress" and out and out[-1] == "progress"):
            out.append(kind)
    return out

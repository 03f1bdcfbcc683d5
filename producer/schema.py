"""The dance request and result, shared by producers and the worker.

A request arrives in one of two shapes and is normalised to one flat, typed :class:`DanceRequest`:

* the original serverless endpoint's body, unchanged, so old clients migrate without edits::

      {"images": {"reference_image": URL}, "videos": {"dance_video": URL}, "prompt": ..., "width": 512, ...}

  (optionally wrapped in ``{"input": {...}}`` as serverless clients send it);
* the same fields flat: ``{"reference_image": URL, "dance_video": URL, "prompt": ...}``.

Every problem raises an :class:`~producer.errors.InvalidRequest` with a stable code and the field name.
The worker validates again: it never trusts what a producer sent.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from producer.errors import (
    REQUEST_BAD_MEDIA_REF,
    REQUEST_BAD_OPTION,
    REQUEST_DUPLICATE_FIELD,
    REQUEST_MISSING_FIELD,
    REQUEST_NOT_OBJECT,
    REQUEST_OUT_OF_RANGE,
    REQUEST_TEXT_TOO_LONG,
    REQUEST_UNKNOWN_FIELD,
    REQUEST_WRONG_TYPE,
    error,
)

#: Width and height must be multiples of this many pixels (the Wan VAE and the SCAIL pose grid).
SIZE_MULTIPLE_PX = 32
#: Smallest and largest width or height, in pixels.
MIN_SIZE_PX = 64
MAX_SIZE_PX = 2048
#: Defaults of the original endpoint's handler.
DEFAULT_WIDTH_PX = 512
DEFAULT_HEIGHT_PX = 896
DEFAULT_STEPS = 6
MAX_STEPS = 100
DEFAULT_CFG = 1.0
MAX_CFG = 30.0
#: Seed that means "pick one at random"; the seed used is recorded in the result.
RANDOM_SEED = -1
#: Largest seed: the largest integer every JSON client represents exactly (2**53 - 1).
MAX_SEED = 2**53 - 1
#: Longest prompt or negative prompt, in characters.
MAX_PROMPT_CHARS = 4000
#: Longest media reference (URL or URI), in characters.
MAX_MEDIA_REF_CHARS = 4096
#: The negative prompt the reference workflow hard-coded; now only the default.
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
#: Job ids become Redis keys, storage keys, folder names and the ``webhook-id`` header, so they are
#: restricted to a safe alphabet. Always use ``fullmatch``: ``$`` also matches before a final newline,
#: so ``match`` would let ``"abc\n"`` through.
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: Queue names: Celery routing keys without surprises (``fullmatch`` them too).
QUEUE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
#: Celery's Redis priorities run 0 (first) to 9 (last).
MIN_PRIORITY, MAX_PRIORITY = 0, 9
#: Media reference schemes a request may carry (a producer turns local files into storage URIs).
MEDIA_SCHEMES = ("http://", "https://", "s3://", "file://")

_MEDIA_FIELDS = {"reference_image": "images", "dance_video": "videos"}
_FIELDS = (
    "reference_image", "dance_video", "prompt", "negative_prompt", "width", "height", "steps", "cfg", "seed",
)


@dataclass(frozen=True)
class DanceRequest:
    """A validated, normalised dance job request."""

    reference_image: str
    dance_video: str
    prompt: str
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    width: int = DEFAULT_WIDTH_PX
    height: int = DEFAULT_HEIGHT_PX
    steps: int = DEFAULT_STEPS
    cfg: float = DEFAULT_CFG
    seed: int = RANDOM_SEED
    #: Human-readable notes about normalisation (for example rounding), echoed in the result.
    notes: tuple[str, ...] = field(default=(), compare=False)

    def to_payload(self) -> dict[str, Any]:
        """The flat JSON form sent to the worker."""
        payload = asdict(self)
        payload.pop("notes")
        return payload

    def resolved_seed(self, job_id: str) -> int:
        """The seed to run with: the request's, or for -1 one derived from the job id.

        Deriving it (rather than drawing it) makes a redelivered job bind an identical prompt, so
        ComfyUI can serve it from its cache and the result is reproducible.
        """
        if self.seed != RANDOM_SEED:
            return self.seed
        digest = hashlib.sha256(f"dance-seed:{job_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % (MAX_SEED + 1)


def parse_request(raw: object) -> DanceRequest:
    """Validate ``raw`` (either accepted shape) into a :class:`DanceRequest`."""
    flat = _flatten(raw)
    notes: list[str] = []
    for name in ("reference_image", "dance_video", "prompt"):
        if name not in flat:
            raise error(REQUEST_MISSING_FIELD, f"'{name}' is required", field=name)
    width = _size(flat, "width", DEFAULT_WIDTH_PX, notes)
    height = _size(flat, "height", DEFAULT_HEIGHT_PX, notes)
    return DanceRequest(
        reference_image=_media(flat, "reference_image"),
        dance_video=_media(flat, "dance_video"),
        prompt=_text(flat, "prompt", None),
        negative_prompt=_text(flat, "negative_prompt", DEFAULT_NEGATIVE_PROMPT),
        width=width,
        height=height,
        steps=_int(flat, "steps", DEFAULT_STEPS, 1, MAX_STEPS),
        cfg=_float(flat, "cfg", DEFAULT_CFG, 0.0, MAX_CFG),
        seed=_int(flat, "seed", RANDOM_SEED, RANDOM_SEED, MAX_SEED),
        notes=tuple(notes),
    )


def _flatten(raw: object) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise error(REQUEST_NOT_OBJECT, f"a request must be a JSON object, not {_type_name(raw)}")
    body: Mapping[str, Any] = raw
    if set(body) == {"input"} and isinstance(body["input"], Mapping):
        body = body["input"]  # the serverless envelope of the original endpoint
    flat: dict[str, Any] = {}
    for key, value in body.items():
        if key in ("images", "videos"):
            _merge_group(flat, key, value)
        elif key in _FIELDS:
            if key in flat:
                raise error(REQUEST_DUPLICATE_FIELD, f"'{key}' is given both flat and under '{key}s'", field=key)
            flat[key] = value
        else:
            raise error(
                REQUEST_UNKNOWN_FIELD, f"unknown field '{key}'", field=str(key), allowed=sorted(_FIELDS)
            )
    return flat


def _merge_group(flat: dict[str, Any], group: str, value: object) -> None:
    if not isinstance(value, Mapping):
        raise error(REQUEST_WRONG_TYPE, f"'{group}' must be an object", field=group)
    for key, ref in value.items():
        if _MEDIA_FIELDS.get(key) != group:
            raise error(REQUEST_UNKNOWN_FIELD, f"unknown field '{group}.{key}'", field=f"{group}.{key}")
        if key in flat:
            raise error(REQUEST_DUPLICATE_FIELD, f"'{key}' is given both flat and under '{group}'", field=key)
        flat[key] = ref


def _media(flat: Mapping[str, Any], name: str) -> str:
    value = flat[name]
    if not isinstance(value, str):
        raise error(REQUEST_WRONG_TYPE, f"'{name}' must be a URL string, not {_type_name(value)}", field=name)
    ref = value.strip()
    if not ref or len(ref) > MAX_MEDIA_REF_CHARS:
        raise error(
            REQUEST_BAD_MEDIA_REF, f"'{name}' must be a URL of 1 to {MAX_MEDIA_REF_CHARS} characters", field=name
        )
    if not ref.lower().startswith(MEDIA_SCHEMES):
        raise error(
            REQUEST_BAD_MEDIA_REF,
            f"'{name}' must be an http(s):// URL or an s3:// URI (local files: use `dance submit`)",
            field=name,
            scheme=ref.split(":", 1)[0][:16] if ":" in ref else "",
        )
    return ref


def _text(flat: Mapping[str, Any], name: str, default: str | None) -> str:
    value = flat.get(name, default)
    if not isinstance(value, str):
        raise error(REQUEST_WRONG_TYPE, f"'{name}' must be a string, not {_type_name(value)}", field=name)
    if len(value) > MAX_PROMPT_CHARS:
        raise error(
            REQUEST_TEXT_TOO_LONG,
            f"'{name}' has {len(value)} characters; the limit is {MAX_PROMPT_CHARS}",
            field=name, length=len(value), limit=MAX_PROMPT_CHARS,
        )
    return value


def _int(flat: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = flat.get(name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(REQUEST_WRONG_TYPE, f"'{name}' must be an integer, not {_type_name(value)}", field=name)
    if not low <= value <= high:
        raise error(
            REQUEST_OUT_OF_RANGE, f"'{name}' must be between {low} and {high}, got {value}",
            field=name, value=value, min=low, max=high,
        )
    return value


def _float(flat: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = flat.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise error(REQUEST_WRONG_TYPE, f"'{name}' must be a number, not {_type_name(value)}", field=name)
    if not low <= value <= high:
        raise error(
            REQUEST_OUT_OF_RANGE, f"'{name}' must be between {low:g} and {high:g}, got {value}",
            field=name, value=value, min=low, max=high,
        )
    return float(value)


def _size(flat: Mapping[str, Any], name: str, default: int, notes: list[str]) -> int:
    value = _int(flat, name, default, MIN_SIZE_PX, MAX_SIZE_PX)
    rounded = value - value % SIZE_MULTIPLE_PX
    if rounded != value:
        notes.append(f"{name} {value} rounded down to {rounded} (a multiple of {SIZE_MULTIPLE_PX})")
    return rounded


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise error(
            REQUEST_BAD_OPTION,
            "job_id must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit",
            option="job_id",
        )
    return job_id


def check_queue(queue: str) -> str:
    if not isinstance(queue, str) or not QUEUE_PATTERN.fullmatch(queue):
        raise error(REQUEST_BAD_OPTION, f"queue {queue!r} is not a valid queue name", option="queue")
    return queue


def check_priority(priority: int) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise error(
            REQUEST_BAD_OPTION, f"priority must be an integer from {MIN_PRIORITY} (first) to {MAX_PRIORITY}",
            option="priority",
        )
    return priority


def check_timeout_s(timeout_s: float) -> float:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not timeout_s > 0:
        raise error(REQUEST_BAD_OPTION, "timeout_s must be a positive number of seconds", option="timeout_s")
    return float(timeout_s)

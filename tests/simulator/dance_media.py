"""Small inputs for the dance workflow: a reference PNG, a generated clip, and placeholder binding."""

from __future__ import annotations

import io
import json
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOW_PATH = REPO_ROOT / "worker" / "workflows" / "dance_scail.json"
PLACEHOLDER_RE = re.compile(r"^\{\{(\w+)\}\}$")
#: Audio sample rate of generated clips, in Hz.
CLIP_SAMPLE_RATE_HZ = 16000


def reference_png(size: tuple[int, int] = (96, 128), color: tuple[int, int, int] = (30, 90, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_clip(path: Path, frames: int, size: tuple[int, int] = (64, 96), fps: int = 24, audio: bool = False) -> Path:
    """An h264 MP4 whose frames fade from black to white, optionally with a sine tone."""
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=fps)
        assert isinstance(video, av.VideoStream)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        tone = container.add_stream("aac", rate=CLIP_SAMPLE_RATE_HZ) if audio else None
        for index in range(frames):
            level = int(255 * index / max(1, frames - 1))
            pixels = np.full((size[1], size[0], 3), level, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if isinstance(tone, av.AudioStream):
            _write_tone(container, tone, Fraction(frames, fps))
    return path


def _write_tone(container: Any, stream: av.AudioStream, duration_s: Fraction) -> None:
    samples = int(CLIP_SAMPLE_RATE_HZ * duration_s)
    chunk = 1024
    for start in range(0, samples, chunk):
        count = min(chunk, samples - start)
        times = (np.arange(start, start + count) / CLIP_SAMPLE_RATE_HZ).astype(np.float32)
        wave = (0.2 * np.sin(2 * np.pi * 440 * times)).astype(np.float32).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
        frame.sample_rate = CLIP_SAMPLE_RATE_HZ
        frame.pts = start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def bound_workflow(values: dict[str, Any]) -> dict[str, Any]:
    """The shipped workflow with every ``"{{name}}"`` string value replaced by ``values[name]``."""
    workflow: dict[str, Any] = json.loads(WORKFLOW_PATH.read_text())
    for node in workflow.values():
        for key, value in node["inputs"].items():
            match = PLACEHOLDER_RE.match(value) if isinstance(value, str) else None
            if match:
                node["inputs"][key] = values[match.group(1)]
    return workflow


def decode_video(path: Path) -> tuple[int, int, int, bool]:
    """(width, height, frame count, has audio) of a video file, decoding every frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return stream.codec_context.width, stream.codec_context.height, count, bool(container.streams.audio)

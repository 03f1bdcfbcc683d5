"""Sample media the project makes itself: a character image and a short driving dance clip.

Used by ``make demo`` and by the tests, so no binary media is checked in.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
from PIL import Image, ImageDraw

#: Frame rate of the generated clip, in frames per second (the workflow loads at 24).
CLIP_FPS = 24


def make_character_png(path: Path, width_px: int = 256, height_px: int = 448) -> Path:
    """A flat-colour character standing on a floor, as a PNG."""
    image = Image.new("RGB", (width_px, height_px), (236, 228, 210))
    draw = ImageDraw.Draw(image)
    _figure(draw, width_px, height_px, phase=0.0, colour=(200, 60, 80))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def make_dance_mp4(path: Path, frames: int = 24, width_px: int = 128, height_px: int = 224) -> Path:
    """A stick figure swinging its arms and legs, as an h264 MP4 (``frames`` frames at 24 fps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = width_px, height_px, "yuv420p"
        stream.time_base = Fraction(1, CLIP_FPS)
        for index in range(frames):
            image = Image.new("RGB", (width_px, height_px), (20, 24, 40))
            _figure(ImageDraw.Draw(image), width_px, height_px, phase=index / CLIP_FPS * 2 * math.pi,
                    colour=(240, 240, 240))
            frame = av.VideoFrame.from_image(image)  # type: ignore[no-untyped-call]
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _figure(draw: ImageDraw.ImageDraw, width: int, height: int, phase: float, colour: tuple[int, int, int]) -> None:
    cx, unit = width / 2, height / 10
    head_y, hip_y = unit * 2, unit * 5.5
    line = max(2, int(width / 40))
    draw.ellipse((cx - unit * 0.8, head_y - unit * 0.8, cx + unit * 0.8, head_y + unit * 0.8), fill=colour)
    draw.line((cx, head_y + unit * 0.8, cx, hip_y), fill=colour, width=line)
    swing = math.sin(phase) * unit * 1.5
    shoulder_y = head_y + unit * 1.5
    draw.line((cx, shoulder_y, cx - unit * 2, shoulder_y + swing), fill=colour, width=line)
    draw.line((cx, shoulder_y, cx + unit * 2, shoulder_y - swing), fill=colour, width=line)
    draw.line((cx, hip_y, cx - unit * 1.2 - swing / 3, unit * 9), fill=colour, width=line)
    draw.line((cx, hip_y, cx + unit * 1.2 - swing / 3, unit * 9), fill=colour, width=line)

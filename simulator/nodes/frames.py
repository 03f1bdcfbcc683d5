"""Lazy frame streams: a video is decoded frame by frame when a consumer iterates, never held whole."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

from simulator.nodes.base import to_float, to_uint8

#: Frame rate assumed for a stream that declares none.
FALLBACK_FPS = 24.0
#: Tolerance when turning frame times into indices, so 0.9999999 frames counts as 1.
INDEX_EPSILON = 1e-9
#: Largest frame-rate denominator kept (NTSC rates are n/1001).
MAX_RATE_DENOMINATOR = 1001
#: ComfyUI upscale_method names to Pillow filters.
RESAMPLING = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def resize_frame(frame: np.ndarray, width: int, height: int, method: str = "bilinear") -> np.ndarray:
    """Resize one uint8 (h, w, 3) frame."""
    if frame.shape[1] == width and frame.shape[0] == height:
        return frame
    image = Image.fromarray(frame).resize(
        (max(1, width), max(1, height)), RESAMPLING.get(method, Image.Resampling.BILINEAR)
    )
    return np.asarray(image)


def crop_to_aspect(frame: np.ndarray, width: int, height: int, position: str = "center") -> np.ndarray:
    """Cut the largest ``width:height`` window out of ``frame`` (ImageResizeKJv2 and ImageScale crop)."""
    old_h, old_w = frame.shape[0], frame.shape[1]
    if old_w / old_h > width / height:
        crop_w, crop_h = round(old_h * width / height), old_h
    else:
        crop_w, crop_h = old_w, round(old_w * height / width)
    x = {"left": 0, "right": old_w - crop_w}.get(position, (old_w - crop_w) // 2)
    y = {"top": 0, "bottom": old_h - crop_h}.get(position, (old_h - crop_h) // 2)
    return frame[y : y + crop_h, x : x + crop_w]


class FrameSource(ABC):
    """A batch of frames of one size, produced on demand as uint8 (h, w, 3) arrays."""

    width: int
    height: int
    count: int

    @abstractmethod
    def frames(self) -> Iterator[np.ndarray]: ...

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.count}x{self.height}x{self.width}x3>"


class ArrayFrames(FrameSource):
    """An in-memory float batch seen as a stream."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.count, self.height, self.width = images.shape[0], images.shape[1], images.shape[2]

    def frames(self) -> Iterator[np.ndarray]:
        for frame in self.images:
            yield to_uint8(frame)


def as_source(value: np.ndarray | FrameSource) -> FrameSource:
    return value if isinstance(value, FrameSource) else ArrayFrames(value)


def as_array(value: np.ndarray | FrameSource) -> np.ndarray:
    """Materialise a batch; only core image nodes do this, on batches the caller sized."""
    if isinstance(value, np.ndarray):
        return value
    return np.stack([to_float(frame) for frame in value.frames()])


@dataclass(frozen=True)
class ClipSelection:
    """VHS_LoadVideo's frame selection, applied in VHS's order: rate, skip, every nth, cap."""

    force_rate: float = 0.0
    skip_first_frames: int = 0
    select_every_nth: int = 1
    frame_load_cap: int = 0


class ClipFrames(FrameSource):
    """Frames of a video file, re-timed and selected like VHS_LoadVideo."""

    def __init__(self, path: str, selection: ClipSelection, width: int = 0, height: int = 0) -> None:
        self.path = path
        self.selection = selection
        with av.open(path) as container:
            stream = container.streams.video[0]
            self.source_fps = float(stream.average_rate or stream.guessed_rate or FALLBACK_FPS)
            self.source_width, self.source_height = stream.codec_context.width, stream.codec_context.height
            self.source_count = stream.frames or sum(1 for _ in container.decode(stream))
        self.width, self.height = _fit_size(self.source_width, self.source_height, width, height)
        self.count = sum(1 for _ in self._selected_indices())
        self.fps = selection.force_rate or self.source_fps

    def _retimed_indices(self) -> Iterator[int]:
        """Source frame index for each output frame at the forced rate (a frame may repeat or drop)."""
        rate = self.selection.force_rate
        if not rate:
            yield from range(self.source_count)
            return
        total = math.ceil(self.source_count * rate / self.source_fps - INDEX_EPSILON)
        for j in range(total):
            yield min(self.source_count - 1, int(j * self.source_fps / rate + INDEX_EPSILON))

    def _selected_indices(self) -> Iterator[int]:
        sel = self.selection
        emitted = 0
        for position, index in enumerate(self._retimed_indices()):
            # VHS counts evaluated frames from 1 and keeps those divisible by n: the n-th, 2n-th...
            evaluated = position - sel.skip_first_frames + 1
            if evaluated < 1 or evaluated % sel.select_every_nth:
                continue
            if sel.frame_load_cap and emitted >= sel.frame_load_cap:
                return
            emitted += 1
            yield index

    def frames(self) -> Iterator[np.ndarray]:
        wanted = iter(self._selected_indices())
        target = next(wanted, None)
        with av.open(self.path) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if target is None:
                    return
                rgb = None
                while target == index:
                    if rgb is None:
                        rgb = resize_frame(frame.to_ndarray(format="rgb24"), self.width, self.height)
                    yield rgb
                    target = next(wanted, None)


def _fit_size(source_w: int, source_h: int, width: int, height: int) -> tuple[int, int]:
    if width and height:
        return width, height
    if width:
        return width, max(1, round(source_h * width / source_w))
    if height:
        return max(1, round(source_w * height / source_h)), height
    return source_w, source_h


class ResizedFrames(FrameSource):
    """Another stream resized per frame (``stretch``, ``crop`` or aspect-keeping ``resize``)."""

    def __init__(
        self,
        source: FrameSource,
        width: int,
        height: int,
        method: str = "bilinear",
        crop_position: str | None = None,
    ) -> None:
        self.source, self.method, self.crop_position = source, method, crop_position
        self.width, self.height, self.count = width, height, source.count

    def frames(self) -> Iterator[np.ndarray]:
        for frame in self.source.frames():
            cropped = frame
            if self.crop_position is not None:
                cropped = crop_to_aspect(frame, self.width, self.height, self.crop_position)
            yield resize_frame(cropped, self.width, self.height, self.method)


class CompositeFrames(FrameSource):
    """The simulated generation: the reference image at full size with each driving frame inset."""

    def __init__(self, reference: np.ndarray, driving: FrameSource, width: int, height: int, count: int) -> None:
        self.base = resize_frame(to_uint8(reference), width, height, "bilinear")
        self.driving, self.width, self.height, self.count = driving, width, height, count

    def frames(self) -> Iterator[np.ndarray]:
        inset_w, inset_h = max(1, self.width // 2), max(1, self.height // 2)
        produced = 0
        last: np.ndarray | None = None
        for frame in self.driving.frames():
            if produced >= self.count:
                return
            last = self._compose(frame, inset_w, inset_h)
            produced += 1
            yield last
        # A driving stream shorter than num_frames: hold its last frame, as a sampler would keep going.
        while produced < self.count:
            yield last if last is not None else self.base
            produced += 1

    def _compose(self, frame: np.ndarray, inset_w: int, inset_h: int) -> np.ndarray:
        out = self.base.copy()
        out[:inset_h, :inset_w] = resize_frame(frame, inset_w, inset_h, "bilinear")
        return out

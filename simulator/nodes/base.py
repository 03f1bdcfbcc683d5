"""What node implementations receive and return.

IMAGE values are either numpy float32 arrays shaped (batch, height, width, 3) with values in 0..1, as
ComfyUI's tensors are, or lazy :class:`~simulator.nodes.frames.FrameSource` streams for video frames, so a
clip never sits in memory whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from simulator.paths import Dirs


class InterruptProcessingError(Exception):
    """Raised at a progress tick or node start after POST /interrupt (model_management)."""


@dataclass
class NodeOutput:
    """A node's return: one value per output slot, and the ``ui`` dict output nodes report."""

    result: tuple[Any, ...] = ()
    ui: dict[str, list[Any]] | None = None


@dataclass
class NodeContext:
    """Per-call services: folders, progress reporting, persistent per-node state."""

    node_id: str
    class_type: str
    dirs: Dirs
    #: Hidden inputs ComfyUI passes: prompt, extra_pnginfo, unique_id.
    hidden: dict[str, Any]
    #: State kept per (node id, class) across prompts, like ComfyUI's object cache.
    state: dict[str, Any]
    #: ``progress(value, total)``: raises InterruptProcessingError when an interrupt is pending.
    #: Values may be fractional (WanVideoSamplerv2's context windows) or 0 (a bar being reset).
    progress: Callable[[float, int], None]
    #: ``preview(image)``: sends a binary PNG preview frame to the submitting client.
    preview: Callable[[Image.Image], None]
    #: Simulated seconds of the heavy sampler node.
    exec_s: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)


class Opaque:
    """A value of a type the simulator does not model (a model handle, embeddings, options)."""

    def __init__(self, class_type: str, slot: int, inputs: dict[str, Any] | None = None) -> None:
        self.class_type = class_type
        self.slot = slot
        self.inputs = dict(inputs or {})

    def __repr__(self) -> str:
        return f"<{self.class_type} output {self.slot} at {id(self):#x}>"


def to_uint8(frame: np.ndarray) -> np.ndarray:
    """One float frame (h, w, c) in 0..1 to uint8, as ComfyUI's savers do (255 * x, clipped)."""
    return np.clip(frame * 255.0, 0, 255).astype(np.uint8)


def to_float(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.float32) / 255.0


def pil_frames(images: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(to_uint8(frame)) for frame in images]

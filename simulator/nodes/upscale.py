"""UpscaleModelLoader and ImageUpscaleWithModel: a plain resize reporting tiled progress like the real one."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from simulator.nodes.base import NodeContext, NodeOutput, to_float, to_uint8
from simulator.nodes.frames import as_array, resize_frame

#: Tile edge and overlap of ImageUpscaleWithModel's tiled_scale, in pixels.
UPSCALE_TILE_PX = 512
UPSCALE_OVERLAP_PX = 32
#: Scale assumed for a model file whose name does not say (``..._x4...``).
DEFAULT_MODEL_SCALE = 2


class UpscaleModel:
    def __init__(self, name: str) -> None:
        match = re.search(r"x(\d+)", name)
        self.name = name
        self.scale = int(match.group(1)) if match else DEFAULT_MODEL_SCALE

    def __repr__(self) -> str:
        return f"<spandrel.ImageModelDescriptor {self.name} x{self.scale}>"


def tiled_scale_steps(width: int, height: int, tile: int = UPSCALE_TILE_PX, overlap: int = UPSCALE_OVERLAP_PX) -> int:
    """comfy.utils.get_tiled_scale_steps: 1200x900 gives 6 steps (07), 2042x2048 gives 25 (14)."""
    rows = 1 if height <= tile else math.ceil((height - overlap) / (tile - overlap))
    cols = 1 if width <= tile else math.ceil((width - overlap) / (tile - overlap))
    return rows * cols


def upscale_model_loader(ctx: NodeContext, model_name: str) -> NodeOutput:
    return NodeOutput((UpscaleModel(model_name),))


def image_upscale_with_model(ctx: NodeContext, upscale_model: UpscaleModel, image: Any) -> NodeOutput:
    images = as_array(image)
    batch, height, width = images.shape[0], images.shape[1], images.shape[2]
    tiles = tiled_scale_steps(width, height)
    steps = batch * tiles
    scale = upscale_model.scale
    out = []
    for index, frame in enumerate(images):
        out.append(to_float(resize_frame(to_uint8(frame), width * scale, height * scale, "bilinear")))
        # One tick per tile, values 1..steps, as comfy.utils.tiled_scale's ProgressBar reports them.
        for tile in range(1, tiles + 1):
            ctx.progress(index * tiles + tile, steps)
    return NodeOutput((np.clip(np.stack(out), 0.0, 1.0),))

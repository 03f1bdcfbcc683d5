"""Core image nodes, implemented for real with Pillow and numpy."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageOps, ImageSequence

from simulator.nodes.base import NodeContext, NodeOutput, to_float, to_uint8
from simulator.nodes.frames import FrameSource, as_array, crop_to_aspect, resize_frame
from simulator.paths import Dirs

#: Size of the placeholder mask LoadImage returns for images without alpha.
EMPTY_MASK_SIZE = 64
#: Read size when hashing input files, in bytes.
HASH_CHUNK_BYTES = 1 << 20


def load_image(ctx: NodeContext, image: str) -> NodeOutput:
    # Image.open raises PIL.UnidentifiedImageError for a non-image, which becomes the
    # execution_error of 11_exec_error_corrupt_image.
    opened = Image.open(ctx.dirs.input_path(image))
    frames: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    for raw_page in ImageSequence.Iterator(opened):
        page = ImageOps.exif_transpose(raw_page) or raw_page
        if page.mode == "I":
            page = page.point(lambda value: value * (1 / 255))
        rgb = page.convert("RGB")
        size = size or rgb.size
        if rgb.size != size:
            continue
        frames.append(to_float(np.asarray(rgb)))
        masks.append(_mask_of(page))
    if len(frames) > 1 and opened.format != "MPO":
        return NodeOutput((np.stack(frames), np.stack(masks)))
    return NodeOutput((frames[0][None], masks[0][None]))


def _mask_of(page: Image.Image) -> np.ndarray:
    if "A" in page.getbands():
        return 1.0 - to_float(np.asarray(page.getchannel("A")))
    if page.mode == "P" and "transparency" in page.info:
        return 1.0 - to_float(np.asarray(page.convert("RGBA").getchannel("A")))
    return np.zeros((EMPTY_MASK_SIZE, EMPTY_MASK_SIZE), dtype=np.float32)


def load_image_changed(dirs: Dirs, inputs: Mapping[str, Any]) -> Any:
    """LoadImage.IS_CHANGED: the file's sha256, so a re-uploaded file is not served from the cache."""
    digest = hashlib.sha256()
    with open(dirs.input_path(str(inputs["image"])), "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_image_valid(dirs: Dirs, inputs: Mapping[str, Any]) -> bool | str:
    image = str(inputs.get("image"))
    if not os.path.exists(dirs.input_path(image)):
        return f"Invalid image file: {image}"
    return True


def scale_images(images: np.ndarray, width: int, height: int, method: str, crop: str = "disabled") -> np.ndarray:
    out = []
    for frame in images:
        pixels = to_uint8(frame)
        if crop == "center":
            pixels = crop_to_aspect(pixels, width, height)
        out.append(to_float(resize_frame(pixels, width, height, method)))
    return np.stack(out)


def image_scale(ctx: NodeContext, image: Any, upscale_method: str, width: int, height: int, crop: str) -> NodeOutput:
    images = as_array(image)
    if width == 0 and height == 0:
        return NodeOutput((images,))
    if width == 0:
        width = max(1, round(images.shape[2] * height / images.shape[1]))
    elif height == 0:
        height = max(1, round(images.shape[1] * width / images.shape[2]))
    return NodeOutput((scale_images(images, width, height, upscale_method, crop),))


def image_scale_by(ctx: NodeContext, image: Any, upscale_method: str, scale_by: float) -> NodeOutput:
    images = as_array(image)
    width = round(images.shape[2] * scale_by)
    height = round(images.shape[1] * scale_by)
    return NodeOutput((scale_images(images, width, height, upscale_method),))


def image_invert(ctx: NodeContext, image: Any) -> NodeOutput:
    return NodeOutput((1.0 - as_array(image),))


def empty_image(ctx: NodeContext, width: int, height: int, batch_size: int = 1, color: int = 0) -> NodeOutput:
    rgb = np.array([(color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF], dtype=np.float32) / 255.0
    return NodeOutput((np.broadcast_to(rgb, (batch_size, height, width, 3)).copy(),))


def repeat_image_batch(ctx: NodeContext, image: Any, amount: int) -> NodeOutput:
    return NodeOutput((np.tile(as_array(image), (amount, 1, 1, 1)),))


def batch_size_of(value: np.ndarray | FrameSource) -> int:
    return value.count if isinstance(value, FrameSource) else int(value.shape[0])

"""Core output nodes that write images: files named ``<prefix>_<5-digit counter>_.<ext>``."""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

from PIL.PngImagePlugin import PngInfo

from simulator.nodes.base import NodeContext, NodeOutput, pil_frames
from simulator.nodes.frames import as_array
from simulator.paths import save_image_path

#: Letters PreviewImage draws its random prefix from (ComfyUI's list: no 'w', 'p' twice).
PREVIEW_PREFIX_LETTERS = "abcdefghijklmnopqrstupvxyz"
#: Length of PreviewImage's random prefix suffix.
PREVIEW_PREFIX_LENGTH = 5
#: PNG zlib levels of SaveImage and PreviewImage.
SAVE_COMPRESS_LEVEL = 4
PREVIEW_COMPRESS_LEVEL = 1
#: SaveAnimatedWEBP method names to libwebp effort.
WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}


def _png_metadata(ctx: NodeContext) -> PngInfo:
    metadata = PngInfo()
    if ctx.hidden.get("prompt") is not None:
        metadata.add_text("prompt", json.dumps(ctx.hidden["prompt"]))
    for key, value in (ctx.hidden.get("extra_pnginfo") or {}).items():
        metadata.add_text(key, json.dumps(value))
    return metadata


def _save_pngs(ctx: NodeContext, images: Any, prefix: str, folder: str, kind: str, level: int) -> NodeOutput:
    batch = as_array(images)
    path = save_image_path(prefix, folder)
    counter = path.counter
    results = []
    for number, image in enumerate(pil_frames(batch)):
        name = path.filename.replace("%batch_num%", str(number))
        file = f"{name}_{counter:05}_.png"
        image.save(os.path.join(path.full_output_folder, file), pnginfo=_png_metadata(ctx), compress_level=level)
        results.append({"filename": file, "subfolder": path.subfolder, "type": kind})
        counter += 1
    return NodeOutput((), {"images": results})


def save_image(ctx: NodeContext, images: Any, filename_prefix: str = "ComfyUI") -> NodeOutput:
    return _save_pngs(ctx, images, filename_prefix, ctx.dirs.output_dir, "output", SAVE_COMPRESS_LEVEL)


def preview_image(ctx: NodeContext, images: Any) -> NodeOutput:
    # The random suffix lives on the node object, which ComfyUI keeps per node id across prompts.
    suffix = ctx.state.setdefault(
        "prefix_append",
        "_temp_" + "".join(random.choice(PREVIEW_PREFIX_LETTERS) for _ in range(PREVIEW_PREFIX_LENGTH)),
    )
    return _save_pngs(ctx, images, "ComfyUI" + suffix, ctx.dirs.temp_dir, "temp", PREVIEW_COMPRESS_LEVEL)


def save_animated_webp(
    ctx: NodeContext, images: Any, filename_prefix: str, fps: float, lossless: bool, quality: int, method: str
) -> NodeOutput:
    frames = pil_frames(as_array(images))
    path = save_image_path(filename_prefix, ctx.dirs.output_dir)
    exif = frames[0].getexif()
    if ctx.hidden.get("prompt") is not None:
        exif[0x0110] = "prompt:{}".format(json.dumps(ctx.hidden["prompt"]))
    file = f"{path.filename}_{path.counter:05}_.webp"
    frames[0].save(
        os.path.join(path.full_output_folder, file),
        save_all=True,
        duration=int(1000.0 / fps),
        append_images=frames[1:],
        exif=exif,
        lossless=lossless,
        quality=quality,
        method=WEBP_METHODS.get(method, WEBP_METHODS["default"]),
    )
    results = [{"filename": file, "subfolder": path.subfolder, "type": "output"}]
    return NodeOutput((), {"images": results, "animated": [len(frames) != 1]})


def save_animated_png(
    ctx: NodeContext, images: Any, filename_prefix: str, fps: float, compress_level: int
) -> NodeOutput:
    frames = pil_frames(as_array(images))
    path = save_image_path(filename_prefix, ctx.dirs.output_dir)
    file = f"{path.filename}_{path.counter:05}_.png"
    frames[0].save(
        os.path.join(path.full_output_folder, file),
        pnginfo=_png_metadata(ctx),
        compress_level=compress_level,
        save_all=True,
        duration=int(1000.0 / fps),
        append_images=frames[1:],
    )
    results = [{"filename": file, "subfolder": path.subfolder, "type": "output"}]
    return NodeOutput((), {"images": results, "animated": [True]})


def save_image_websocket(ctx: NodeContext, images: Any) -> NodeOutput:
    """Sends each image as a binary PNG frame, after ``progress{value: i, max: n}`` (06)."""
    batch = as_array(images)
    for step, image in enumerate(pil_frames(batch)):
        ctx.progress(step, len(batch))
        ctx.preview(image)
    return NodeOutput((), None)


def websocket_changed(dirs: Any, inputs: Any) -> Any:
    """SaveImageWebsocket.IS_CHANGED returns the time: it is never served from the cache."""
    return time.time()

"""WanVideoWrapper, SCAIL-Pose and NLF nodes of the dance workflow, simulated.

The data that matters flows for real: the resized reference image and the resized driving clip reach the
sampler through the embeds, the poses are the clip at the size RenderNLFPoses is given, and the decoded
"generation" is the reference image with the pose frame inset (:class:`CompositeFrames`). The sampler is the
slow node: it spends ``exec_s`` seconds over its steps.

Progress follows the packs (simulator/catalog/README.md, "Progress messages"): the sampler's first run
loads weights with about a thousand ticks, then ticks once per step (with fractional per-window ticks
before each step when context windows apply); the tiled decode alternates an inner per-latent-frame bar
with an outer per-tile bar; the SCAIL embeds and the text encoder tick briefly; pose detection ticks every
10; NLF, rendering and loaders send nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from simulator.nodes.base import NodeContext, NodeOutput, Opaque
from simulator.nodes.frames import CompositeFrames, FrameSource, ResizedFrames, as_source
from simulator.nodes.kj import pad_outputs

#: Ticks of the sampler's first-run weight loading (one per parameter tensor of the 14B model, about 1000).
WEIGHT_LOAD_TICKS = 1000
#: Frames per latent frame of the Wan VAE (temporal compression 4, first frame alone).
FRAMES_PER_LATENT = 4
#: Ticks of WanVideoTextEncodeCached.
TEXT_ENCODE_TICKS = 3
#: PoseDetectionVitPoseToDWPose reports only every this many of its 2-per-frame steps.
POSE_TICK_EVERY = 10


@dataclass(frozen=True)
class SceneEmbeds:
    """WANVIDIMAGE_EMBEDS as the simulator sees them: the target size, length and conditioning."""

    width: int
    height: int
    num_frames: int
    reference: np.ndarray | None = None
    poses: FrameSource | None = None

    def __repr__(self) -> str:
        return f"<WanVideo image embeds {self.num_frames}x{self.height}x{self.width}>"


@dataclass(frozen=True)
class Schedule:
    steps: int
    start_step: int = 0
    end_step: int = -1

    @property
    def step_count(self) -> int:
        end = self.steps if self.end_step < 0 else min(self.end_step, self.steps)
        return max(1, end - max(0, self.start_step))


def latent_frames(frames: int) -> int:
    return (max(1, frames) - 1) // FRAMES_PER_LATENT + 1


def _vae_encode_ticks(ctx: NodeContext, frames: int) -> None:
    """vae.encode(tiled=False): one tick per latent chunk, then back to 0."""
    chunks = latent_frames(frames)
    for chunk in range(1, chunks + 1):
        ctx.progress(chunk, chunks)
    ctx.progress(0, chunks)


def empty_embeds(ctx: NodeContext, width: int, height: int, num_frames: int, **_options: Any) -> NodeOutput:
    return NodeOutput(pad_outputs(ctx, (SceneEmbeds(int(width), int(height), int(num_frames)),)))


def add_reference_embeds(ctx: NodeContext, embeds: SceneEmbeds, ref_image: Any, **_options: Any) -> NodeOutput:
    reference = ref_image if isinstance(ref_image, np.ndarray) else None
    _vae_encode_ticks(ctx, 1 if reference is None else reference.shape[0])
    return NodeOutput(pad_outputs(ctx, (replace(embeds, reference=reference),)))


def add_pose_embeds(ctx: NodeContext, embeds: SceneEmbeds, pose_images: Any, **_options: Any) -> NodeOutput:
    poses = as_source(pose_images)
    _vae_encode_ticks(ctx, poses.count)
    return NodeOutput(pad_outputs(ctx, (replace(embeds, poses=poses),)))


def text_encode(ctx: NodeContext, **_options: Any) -> NodeOutput:
    for tick in range(1, TEXT_ENCODE_TICKS + 1):
        ctx.progress(tick, TEXT_ENCODE_TICKS)
    return NodeOutput(pad_outputs(ctx, ()))


def nlf_predict(ctx: NodeContext, images: Any, **_options: Any) -> NodeOutput:
    return NodeOutput(pad_outputs(ctx, (as_source(images),)))


def pose_detection(ctx: NodeContext, images: Any, **_options: Any) -> NodeOutput:
    total = 2 * as_source(images).count
    for step in range(POSE_TICK_EVERY, total + 1, POSE_TICK_EVERY):
        ctx.progress(step, total)
    return NodeOutput(pad_outputs(ctx, ()))


def render_nlf_poses(ctx: NodeContext, nlf_poses: Any, width: int, height: int, **_options: Any) -> NodeOutput:
    if not isinstance(nlf_poses, FrameSource):
        raise ValueError("RenderNLFPoses needs NLFPredict poses")
    return NodeOutput(pad_outputs(ctx, (ResizedFrames(nlf_poses, max(1, int(width)), max(1, int(height))),)))


def scheduler(ctx: NodeContext, steps: int, start_step: int = 0, end_step: int = -1, **_options: Any) -> NodeOutput:
    return NodeOutput(pad_outputs(ctx, (Schedule(int(steps), int(start_step), int(end_step)),)))


def context_windows(extra_args: Any, num_frames: int) -> int:
    """How many context windows a step runs (uniform_standard, approximated as evenly spaced windows)."""
    options = extra_args.inputs.get("context_options") if isinstance(extra_args, Opaque) else None
    if not isinstance(options, Opaque):
        return 1
    size = latent_frames(int(options.inputs.get("context_frames", 81)))
    overlap = int(options.inputs.get("context_overlap", 16)) // FRAMES_PER_LATENT
    length = latent_frames(num_frames)
    if length <= size:
        return 1
    return math.ceil((length - overlap) / max(1, size - overlap))


def sampler(
    ctx: NodeContext,
    image_embeds: SceneEmbeds,
    scheduler: Schedule | None = None,
    extra_args: Any = None,
    **_options: Any,
) -> NodeOutput:
    loaded: set[str] = ctx.extras.setdefault("loaded_models", set())
    if "transformer" not in loaded:
        for tick in range(1, WEIGHT_LOAD_TICKS + 1):
            ctx.progress(tick, WEIGHT_LOAD_TICKS)
        ctx.progress(0, WEIGHT_LOAD_TICKS)
        loaded.add("transformer")
    steps = scheduler.step_count if isinstance(scheduler, Schedule) else 1
    windows = context_windows(extra_args, image_embeds.num_frames)
    step_s = ctx.exec_s / steps
    for index in range(steps):
        # Simulated GPU time; the interrupt flag is checked at each tick, so it takes effect here.
        time.sleep(step_s)
        if windows > 1:
            for window in range(1, windows + 1):
                ctx.progress(index + window / windows, steps)
        ctx.progress(index + 1, steps)
    return NodeOutput(pad_outputs(ctx, (image_embeds,)))


def decode(
    ctx: NodeContext,
    samples: SceneEmbeds,
    enable_vae_tiling: bool = False,
    tile_x: int = 272,
    tile_y: int = 272,
    tile_stride_x: int = 144,
    tile_stride_y: int = 128,
    **_options: Any,
) -> NodeOutput:
    if not isinstance(samples, SceneEmbeds) or samples.reference is None or samples.poses is None:
        raise ValueError("WanVideoDecode needs samples conditioned on a reference image and poses")
    if enable_vae_tiling:
        cols = math.ceil(max(0, samples.width - tile_x) / max(1, tile_stride_x)) + 1
        rows = math.ceil(max(0, samples.height - tile_y) / max(1, tile_stride_y)) + 1
        inner = latent_frames(samples.num_frames)
        for tile in range(1, rows * cols + 1):
            for frame in range(1, inner + 1):
                ctx.progress(frame, inner)
            ctx.progress(0, inner)
            ctx.progress(tile, rows * cols)
    frames = CompositeFrames(samples.reference[0], samples.poses, samples.width, samples.height, samples.num_frames)
    return NodeOutput(pad_outputs(ctx, (frames,)))

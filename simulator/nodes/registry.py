"""Which implementation runs each node class, and the class-level hooks ComfyUI calls around it.

A class in the catalogue but not listed here is a pass-through: it returns opaque placeholders for its
outputs, which is all the loaders and option nodes of the dance workflow need to be.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from simulator.nodes import images, kj, savers, upscale, vhs, video, wan
from simulator.nodes.base import NodeContext, NodeOutput, Opaque
from simulator.paths import Dirs


@dataclass(frozen=True)
class NodeSpec:
    run: Callable[..., NodeOutput]
    #: Inputs VALIDATE_INPUTS takes; ComfyUI skips its own range and list checks for them.
    validate_args: tuple[str, ...] = ()
    validate: Callable[[Dirs, Mapping[str, Any]], bool | str] | None = None
    #: IS_CHANGED: part of the cache key; NaN or a fresh value means "never cached".
    is_changed: Callable[[Dirs, Mapping[str, Any]], Any] | None = None
    reports_progress: bool = False
    #: Undeclared inputs reach the node too: VHS declares ``hidden`` as a dict that contains every name,
    #: which is how the format widgets (crf, pix_fmt) of VHS_VideoCombine arrive.
    accepts_undeclared: bool = False


def passthrough(ctx: NodeContext, **inputs: Any) -> NodeOutput:
    return_types = ctx.extras.get("return_types", [])
    return NodeOutput(tuple(Opaque(ctx.class_type, slot, inputs) for slot in range(len(return_types))))


PASSTHROUGH = NodeSpec(passthrough)

REGISTRY: dict[str, NodeSpec] = {
    "LoadImage": NodeSpec(images.load_image, ("image",), images.load_image_valid, images.load_image_changed),
    "ImageScale": NodeSpec(images.image_scale),
    "ImageScaleBy": NodeSpec(images.image_scale_by),
    "ImageInvert": NodeSpec(images.image_invert),
    "EmptyImage": NodeSpec(images.empty_image),
    "RepeatImageBatch": NodeSpec(images.repeat_image_batch),
    "SaveImage": NodeSpec(savers.save_image),
    "PreviewImage": NodeSpec(savers.preview_image),
    "SaveAnimatedWEBP": NodeSpec(savers.save_animated_webp),
    "SaveAnimatedPNG": NodeSpec(savers.save_animated_png),
    "SaveImageWebsocket": NodeSpec(
        savers.save_image_websocket, is_changed=savers.websocket_changed, reports_progress=True
    ),
    "CreateVideo": NodeSpec(video.create_video),
    "SaveVideo": NodeSpec(video.save_video),
    "SaveWEBM": NodeSpec(video.save_webm),
    "LoadVideo": NodeSpec(video.load_video, ("file",), vhs.video_file_valid, video.load_video_changed),
    "GetVideoComponents": NodeSpec(video.get_video_components),
    "UpscaleModelLoader": NodeSpec(upscale.upscale_model_loader),
    "ImageUpscaleWithModel": NodeSpec(upscale.image_upscale_with_model, reports_progress=True),
    "VHS_LoadVideo": NodeSpec(
        vhs.load_video, ("video",), vhs.video_file_valid, vhs.video_file_changed, reports_progress=True
    ),
    "VHS_VideoCombine": NodeSpec(vhs.video_combine, reports_progress=True, accepts_undeclared=True),
    "INTConstant": NodeSpec(kj.int_constant),
    "FloatConstant": NodeSpec(kj.float_constant),
    "SimpleCalculatorKJ": NodeSpec(kj.simple_calculator),
    "ImageResizeKJv2": NodeSpec(kj.image_resize_kj),
    "GetImageSizeAndCount": NodeSpec(kj.get_image_size_and_count),
    "WanVideoEmptyEmbeds": NodeSpec(wan.empty_embeds),
    "WanVideoAddSCAILReferenceEmbeds": NodeSpec(wan.add_reference_embeds, reports_progress=True),
    "WanVideoAddSCAILPoseEmbeds": NodeSpec(wan.add_pose_embeds, reports_progress=True),
    "WanVideoTextEncodeCached": NodeSpec(wan.text_encode, reports_progress=True),
    "NLFPredict": NodeSpec(wan.nlf_predict),
    "PoseDetectionVitPoseToDWPose": NodeSpec(wan.pose_detection, reports_progress=True),
    "RenderNLFPoses": NodeSpec(wan.render_nlf_poses),
    "WanVideoSchedulerv2": NodeSpec(wan.scheduler),
    "WanVideoSamplerv2": NodeSpec(wan.sampler, reports_progress=True),
    "WanVideoDecode": NodeSpec(wan.decode, reports_progress=True),
}


def spec_for(class_type: str) -> NodeSpec:
    return REGISTRY.get(class_type, PASSTHROUGH)

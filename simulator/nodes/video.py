"""Core video nodes (comfy_extras.nodes_video) encoded for real with PyAV, one frame at a time."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from fractions import Fraction
from typing import Any

import av
import numpy as np

from simulator.nodes.base import NodeContext, NodeOutput
from simulator.nodes.frames import MAX_RATE_DENOMINATOR, ClipFrames, ClipSelection, FrameSource, as_source
from simulator.paths import Dirs, save_image_path

#: SaveVideo's metadata-friendly MP4 muxer option.
MP4_OPTIONS = {"movflags": "use_metadata_tags"}
#: SaveWEBM codec names to encoder names.
WEBM_ENCODERS = {"vp9": "libvpx-vp9", "av1": "libsvtav1"}


class VideoValue:
    """comfy_api VideoFromComponents/VideoFromFile: frames, a frame rate and optional audio."""

    def __init__(self, images: np.ndarray | FrameSource, frame_rate: Fraction, audio: Any = None) -> None:
        self.images = as_source(images)
        self.frame_rate = frame_rate
        self.audio = audio

    def __repr__(self) -> str:
        return f"<comfy_api.input_impl.video_types.VideoFromComponents object at {id(self):#x}>"


def encode_video(
    path: str,
    frames: Iterable[np.ndarray],
    size: tuple[int, int],
    rate: Fraction,
    codec: str = "h264",
    options: dict[str, str] | None = None,
    on_frame: Callable[[], None] | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Encode uint8 RGB frames into ``path``; the container follows the extension."""
    container_options = MP4_OPTIONS if path.endswith(".mp4") else {}
    with av.open(path, mode="w", options=container_options) as output:
        for key, value in (metadata or {}).items():
            output.metadata[key] = value
        stream = output.add_stream(codec, rate=rate)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if options:
            stream.options = dict[str, object](options)
        for pixels in frames:
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format="yuv420p")
            output.mux(stream.encode(frame))
            if on_frame is not None:
                on_frame()
        output.mux(stream.encode(None))


def create_video(ctx: NodeContext, images: Any, fps: float, audio: Any = None) -> NodeOutput:
    return NodeOutput((VideoValue(images, Fraction(fps), audio),))


def save_video(ctx: NodeContext, video: VideoValue, filename_prefix: str, format: str, codec: str) -> NodeOutput:
    path = save_image_path(filename_prefix, ctx.dirs.output_dir)
    file = f"{path.filename}_{path.counter:05}_.mp4"
    if format not in ("auto", "mp4"):
        raise ValueError("Only MP4 format is supported for now")
    if codec not in ("auto", "h264"):
        raise ValueError("Only H264 codec is supported for now")
    rate = Fraction(round(video.frame_rate * 1000), 1000)
    source = video.images
    # libx264 refuses odd sizes: av.error.ExternalError, as in 12_exec_error_mid_graph.
    metadata = {"prompt": json.dumps(ctx.hidden["prompt"])} if ctx.hidden.get("prompt") is not None else None
    encode_video(
        os.path.join(path.full_output_folder, file),
        source.frames(),
        (source.width, source.height),
        rate,
        metadata=metadata,
    )
    results = [{"filename": file, "subfolder": path.subfolder, "type": "output"}]
    return NodeOutput((), {"images": results, "animated": [True]})


def save_webm(ctx: NodeContext, images: Any, filename_prefix: str, codec: str, fps: float, crf: float) -> NodeOutput:
    source = as_source(images)
    path = save_image_path(filename_prefix, ctx.dirs.output_dir)
    file = f"{path.filename}_{path.counter:05}_.webm"
    options = {"crf": str(crf)}
    if codec == "av1":
        options["preset"] = "6"
    encode_video(
        os.path.join(path.full_output_folder, file),
        source.frames(),
        (source.width, source.height),
        Fraction(round(fps * 1000), 1000),
        WEBM_ENCODERS[codec],
        options,
    )
    results = [{"filename": file, "subfolder": path.subfolder, "type": "output"}]
    return NodeOutput((), {"images": results, "animated": [True]})


def load_video(ctx: NodeContext, file: str) -> NodeOutput:
    clip = ClipFrames(ctx.dirs.input_path(file), ClipSelection())
    return NodeOutput((VideoValue(clip, Fraction(clip.source_fps).limit_denominator(MAX_RATE_DENOMINATOR)),))


def load_video_changed(dirs: Dirs, inputs: Mapping[str, Any]) -> float:
    """LoadVideo.IS_CHANGED uses the file's mtime (not a hash) to spare rehashing large videos."""
    return os.path.getmtime(dirs.input_path(str(inputs["file"])))


def get_video_components(ctx: NodeContext, video: VideoValue) -> NodeOutput:
    return NodeOutput((video.images, video.audio, float(video.frame_rate)))

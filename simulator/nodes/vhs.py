"""VideoHelperSuite nodes: VHS_LoadVideo streams the uploaded clip, VHS_VideoCombine writes a real MP4.

VHS names its files ``<prefix>_<5 digits>.<ext>`` (no trailing underscore), keeps its own counter over
every file in the folder, saves the first frame as ``<prefix>_<counter>.png`` next to the video, and reports
the result under the ``gifs`` key. When the audio input carries sound, a second file
``<prefix>_<counter>-audio.mp4`` is written and reported instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from fractions import Fraction
from typing import Any

import av
import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from simulator.nodes.base import NodeContext, NodeOutput
from simulator.nodes.frames import MAX_RATE_DENOMINATOR, ClipFrames, ClipSelection, FrameSource, as_source
from simulator.nodes.kj import pad_outputs
from simulator.nodes.video import encode_video
from simulator.paths import Dirs, save_image_path, vhs_counter

#: Read size when hashing a clip for IS_CHANGED, in bytes.
HASH_CHUNK_BYTES = 1 << 20
#: VHS formats the simulator writes, to (extension, encoder); frames are always yuv420p.
FORMATS = {"video/h264-mp4": ("mp4", "libx264"), "video/webm": ("webm", "libvpx-vp9")}
#: zlib level of the first-frame PNG VHS saves beside the video.
METADATA_PNG_COMPRESS_LEVEL = 4
#: Encoder rate control when the node gives no crf.
DEFAULT_CRF = 19

#: Size of an MP4 box header: a 32-bit size and a four-letter type.
FREE_BOX_HEADER_BYTES = 8


class ClipAudio(Mapping[str, Any]):
    """VHS's lazy audio map: reading ``waveform`` of a clip without sound raises, as in VHS."""

    def __init__(self, path: str) -> None:
        self.path = path

    def has_audio(self) -> bool:
        with av.open(self.path) as container:
            return bool(container.streams.audio)

    def __getitem__(self, key: str) -> Any:
        if not self.has_audio():
            raise KeyError(key)
        return self.path

    def __iter__(self) -> Iterator[str]:
        return iter(("waveform", "sample_rate"))

    def __len__(self) -> int:
        return 2


def video_file_valid(dirs: Dirs, inputs: Mapping[str, Any]) -> bool | str:
    name = str(next(iter(inputs.values()), ""))
    if not os.path.exists(dirs.input_path(name)):
        return f"Invalid video file: {name}"
    return True


def video_file_changed(dirs: Dirs, inputs: Mapping[str, Any]) -> str:
    digest = hashlib.sha256()
    with open(dirs.input_path(str(next(iter(inputs.values())))), "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_video(
    ctx: NodeContext,
    video: str,
    force_rate: float = 0,
    custom_width: int = 0,
    custom_height: int = 0,
    frame_load_cap: int = 0,
    skip_first_frames: int = 0,
    select_every_nth: int = 1,
    **_options: Any,
) -> NodeOutput:
    path = ctx.dirs.input_path(video)
    selection = ClipSelection(
        float(force_rate), int(skip_first_frames), max(1, int(select_every_nth)), int(frame_load_cap)
    )
    try:
        clip = ClipFrames(path, selection, int(custom_width), int(custom_height))
    except (av.error.FFmpegError, IndexError) as error:
        # VHS opens clips with OpenCV and reports an unreadable one like this (load_video_nodes.py:79-81).
        raise ValueError(f"{path} could not be loaded with cv.") from error
    if clip.count == 0:
        raise RuntimeError("No frames generated")
    # VHS ticks once per frame it loads (update_absolute(frames_added, yieldable_frames)).
    for loaded in range(1, clip.count + 1):
        ctx.progress(loaded, clip.count)
    info = {
        "source_fps": clip.source_fps,
        "source_frame_count": clip.source_count,
        "source_duration": clip.source_count / clip.source_fps,
        "source_width": clip.source_width,
        "source_height": clip.source_height,
        "loaded_fps": clip.fps,
        "loaded_frame_count": clip.count,
        "loaded_duration": clip.count / clip.fps,
        "loaded_width": clip.width,
        "loaded_height": clip.height,
    }
    return NodeOutput((clip, clip.count, ClipAudio(path), info))


def video_combine(
    ctx: NodeContext,
    images: Any,
    frame_rate: float,
    loop_count: int = 0,
    filename_prefix: str = "AnimateDiff",
    format: str = "image/gif",
    pingpong: bool = False,
    save_output: bool = True,
    audio: Any = None,
    crf: int = DEFAULT_CRF,
    **_options: Any,
) -> NodeOutput:
    if format not in FORMATS:
        raise ValueError(f"the simulator's VHS_VideoCombine writes only {sorted(FORMATS)}, not {format}")
    source = as_source(images)
    folder = ctx.dirs.output_dir if save_output else ctx.dirs.temp_dir
    path = save_image_path(filename_prefix, folder)
    counter = vhs_counter(path.full_output_folder, path.filename)
    extension, encoder = FORMATS[format]
    first_image_file = f"{path.filename}_{counter:05}.png"
    file = f"{path.filename}_{counter:05}.{extension}"
    file_path = os.path.join(path.full_output_folder, file)
    frames = _progress_frames(ctx, source, os.path.join(path.full_output_folder, first_image_file))
    encode_video(
        file_path,
        frames,
        (source.width, source.height),
        Fraction(frame_rate).limit_denominator(MAX_RATE_DENOMINATOR),
        encoder,
        {"crf": str(crf)},
        metadata=_metadata(ctx),
    )
    pad_free_box(file_path, int(ctx.extras.get("pad_output_bytes", 0)))
    output_files = [os.path.join(path.full_output_folder, first_image_file), file_path]
    if isinstance(audio, ClipAudio) and audio.has_audio():
        file = f"{path.filename}_{counter:05}-audio.{extension}"
        output_files.append(os.path.join(path.full_output_folder, file))
        mux_audio(file_path, audio.path, output_files[-1])
    preview = {
        "filename": file,
        "subfolder": path.subfolder,
        "type": "output" if save_output else "temp",
        "format": format,
        "frame_rate": frame_rate,
        "workflow": first_image_file,
        "fullpath": output_files[-1],
    }
    return NodeOutput(pad_outputs(ctx, ((save_output, output_files),)), {"gifs": [preview]})


def pad_free_box(path: str, pad_bytes: int) -> None:
    """Append an MP4 ``free`` box of ``pad_bytes`` (players skip it), written sparse, so a test can ask
    for a gigabyte output without a gigabyte of encoding."""
    if pad_bytes <= FREE_BOX_HEADER_BYTES:
        return
    with open(path, "r+b") as handle:
        handle.seek(0, os.SEEK_END)
        start = handle.tell()
        handle.write(pad_bytes.to_bytes(4, "big") + b"free")
        handle.truncate(start + pad_bytes)


def _metadata(ctx: NodeContext) -> dict[str, str]:
    prompt = ctx.hidden.get("prompt")
    return {"prompt": json.dumps(prompt)} if prompt is not None else {}


def _progress_frames(ctx: NodeContext, source: FrameSource, first_png: str) -> Iterator[np.ndarray]:
    """Frames for the encoder; saves the first as the metadata PNG and ticks progress per frame."""
    for index, frame in enumerate(source.frames(), start=1):
        if index == 1:
            metadata = PngInfo()
            for key, value in _metadata(ctx).items():
                metadata.add_text(key, value)
            Image.fromarray(frame).save(first_png, pnginfo=metadata, compress_level=METADATA_PNG_COMPRESS_LEVEL)
        yield frame
        ctx.progress(index, source.count)


def mux_audio(video_path: str, clip_path: str, out_path: str) -> None:
    """Copy the encoded video; re-encode the clip's first audio stream to AAC, cut to the video's length."""
    with av.open(video_path) as video_in, av.open(clip_path) as clip_in, av.open(out_path, mode="w") as out:
        video_stream = video_in.streams.video[0]
        video_out = out.add_stream_from_template(video_stream)
        audio_in = clip_in.streams.audio[0]
        audio_out = out.add_stream("aac", rate=audio_in.rate)
        time_base = video_stream.time_base
        duration_s = float(video_stream.duration * time_base) if video_stream.duration and time_base else None
        for packet in video_in.demux(video_stream):
            if packet.dts is not None:
                packet.stream = video_out
                out.mux(packet)
        for frame in clip_in.decode(audio_in):
            if duration_s is not None and frame.time is not None and frame.time > duration_s:
                break
            frame.pts = None
            out.mux(audio_out.encode(frame))
        out.mux(audio_out.encode(None))

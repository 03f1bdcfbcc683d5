"""Prove a downloaded file decodes before a GPU spends minutes on it.

Images are checked for structure and decoded completely with Pillow, so a truncated file fails here.
Videos are opened with PyAV and their first frame is decoded. Both refuse pictures above a pixel cap
before decoding, which bounds the memory a hostile header can make us allocate.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import av
from PIL import Image

from producer.errors import INPUT_CORRUPT, INPUT_TOO_LARGE, error
from worker.inputs.sniff import MediaKind

#: Largest picture (image or video frame) accepted, in pixels (8K UHD: 7680 x 4320).
MAX_PIXELS = 7680 * 4320

#: What Pillow raises for a file it cannot decode.
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
#: What PyAV raises for a file it cannot demux or decode.
_VIDEO_ERRORS = (av.FFmpegError, OSError, ValueError, IndexError, StopIteration)


def _refuse_too_many_pixels(width: int, height: int, source: str) -> None:
    if width * height > MAX_PIXELS:
        raise error(
            INPUT_TOO_LARGE, "the picture has more pixels than allowed",
            source=source, width=width, height=height, max_pixels=MAX_PIXELS,
        )


def verify_image(path: Path, source: str) -> None:
    """Decode the whole image; ``input.corrupt`` if it cannot be, ``input.too_large`` over the cap."""
    try:
        # Our own cap runs first; Pillow's bomb warning would only repeat it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _refuse_too_many_pixels(image.width, image.height, source)
                # verify() checks the structure (PNG chunk CRCs, the closing IEND) that load() skips;
                # it leaves the image unusable, so the pixels are decoded from a second open.
                image.verify()
            with Image.open(path) as image:
                image.load()
    except _IMAGE_ERRORS as exc:
        reason = type(exc).__name__
        raise error(INPUT_CORRUPT, "the image cannot be decoded", source=source, reason=reason) from exc


def verify_video(path: Path, source: str) -> None:
    """Open the video and decode its first frame; ``input.corrupt`` if that fails."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            context = stream.codec_context
            _refuse_too_many_pixels(context.width, context.height, source)
            next(container.decode(stream))
    except _VIDEO_ERRORS as exc:
        reason = type(exc).__name__
        raise error(INPUT_CORRUPT, "the video cannot be decoded", source=source, reason=reason) from exc


def verify_media(path: Path, expected: MediaKind, source: str) -> None:
    """Decode ``path`` the way it will be used: a GIF given as the video is checked as a video."""
    if expected == "video":
        verify_video(path, source)
    else:
        verify_image(path, source)

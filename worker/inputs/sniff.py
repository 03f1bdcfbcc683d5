"""Tell what a media file is from its first bytes, never from its name or a Content-Type header.

Images: PNG, JPEG, WEBP, GIF, BMP. Videos: MP4 and MOV (an ISO base media ``ftyp`` box), WEBM and MKV
(EBML), AVI. GIF is an image here; :func:`accepts` lets it stand in for a video too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple

from producer.errors import INPUT_NOT_MEDIA, error

MediaKind = Literal["image", "video"]

#: How many leading bytes sniffing reads: enough for an EBML header's DocType.
SNIFF_BYTES = 64

#: ISO base media brands that are still images (HEIF, AVIF), not videos.
IMAGE_BRANDS = frozenset({b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"mif1", b"msf1"})
#: The QuickTime brand: an ``ftyp`` file with it is a MOV.
QUICKTIME_BRAND = b"qt  "
#: Header sizes a BMP's DIB header may have (core, info, v2-v5), in bytes.
BMP_DIB_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
#: Bytes a BMP needs for the checks here: file header (14) and the DIB header's size field (4).
BMP_HEADER_BYTES = 18
#: EBML magic number that opens WEBM and MKV files.
EBML_MAGIC = b"\x1a\x45\xdf\xa3"


class MediaType(NamedTuple):
    kind: MediaKind
    content_type: str
    extension: str


PNG = MediaType("image", "image/png", ".png")
JPEG = MediaType("image", "image/jpeg", ".jpg")
GIF = MediaType("image", "image/gif", ".gif")
WEBP = MediaType("image", "image/webp", ".webp")
BMP = MediaType("image", "image/bmp", ".bmp")
MP4 = MediaType("video", "video/mp4", ".mp4")
MOV = MediaType("video", "video/quicktime", ".mov")
WEBM = MediaType("video", "video/webm", ".webm")
MKV = MediaType("video", "video/x-matroska", ".mkv")
AVI = MediaType("video", "video/x-msvideo", ".avi")


def _riff(head: bytes) -> MediaType | None:
    if head[:4] != b"RIFF":
        return None
    return {b"WEBP": WEBP, b"AVI ": AVI}.get(head[8:12])


def _iso_media(head: bytes) -> MediaType | None:
    if head[4:8] != b"ftyp":
        return None
    brand = head[8:12]
    if brand in IMAGE_BRANDS:
        return None
    return MOV if brand == QUICKTIME_BRAND else MP4


def _bmp(head: bytes) -> MediaType | None:
    if head[:2] != b"BM" or len(head) < BMP_HEADER_BYTES:
        return None
    dib_size = int.from_bytes(head[14:18], "little")
    return BMP if head[6:10] == b"\0\0\0\0" and dib_size in BMP_DIB_SIZES else None


def sniff_bytes(head: bytes) -> MediaType | None:
    """The media type ``head`` (a file's first SNIFF_BYTES) announces, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    if head.startswith(EBML_MAGIC):
        return WEBM if b"webm" in head else MKV
    return _riff(head) or _iso_media(head) or _bmp(head)


def sniff_media(path: Path) -> MediaType:
    """``(kind, content_type, extension)`` of the file at ``path``; ``input.not_media`` if unknown."""
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    media = sniff_bytes(head)
    if media is None:
        raise error(INPUT_NOT_MEDIA, "the file is not an image or video we accept", head=head[:8].hex())
    return media


def accepts(expected: MediaKind, media: MediaType) -> bool:
    """Whether ``media`` may be used where ``expected`` is asked for (a GIF may be a video)."""
    return media.kind == expected or (expected == "video" and media == GIF)

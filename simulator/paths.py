"""The input/output/temp folders and ComfyUI's file naming rules (folder_paths)."""

from __future__ import annotations

import mimetypes
import os
import re
from dataclasses import dataclass
from pathlib import Path

#: Extensions VHS_LoadVideo lists from the input folder (videohelpersuite video_extensions).
VHS_VIDEO_EXTENSIONS = ("webm", "mp4", "mkv", "gif", "mov")

mimetypes.init()
mimetypes.add_type("image/webp", ".webp")


@dataclass(frozen=True)
class Dirs:
    """Absolute, normalised folders; ``commonpath`` checks compare against these exact strings."""

    input_dir: str
    output_dir: str
    temp_dir: str

    @classmethod
    def under(cls, root: Path) -> Dirs:
        base = os.path.abspath(root)
        dirs = cls(os.path.join(base, "input"), os.path.join(base, "output"), os.path.join(base, "temp"))
        for folder in (dirs.input_dir, dirs.output_dir, dirs.temp_dir):
            os.makedirs(folder, exist_ok=True)
        return dirs

    def by_type(self, type_name: str | None) -> str | None:
        return {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}.get(type_name or "")

    def annotated(self, name: str) -> tuple[str, str | None]:
        """Strip a ``[output]``/``[input]``/``[temp]`` suffix and return the folder it names."""
        for suffix, folder in (
            ("[output]", self.output_dir),
            ("[input]", self.input_dir),
            ("[temp]", self.temp_dir),
        ):
            if name.endswith(suffix):
                return name[: -len(suffix) - 1], folder
        return name, None

    def input_path(self, name: str) -> str:
        name, base = self.annotated(name)
        return os.path.join(base or self.input_dir, name)


def files_of_kind(folder: str, kind: str) -> list[str]:
    """Top-level files of ``folder`` whose MIME type is ``kind``/*, sorted (LoadImage's list)."""
    names = [f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))]
    kept = []
    for name in names:
        mime_type, _ = mimetypes.guess_type(name, strict=False)
        if mime_type and mime_type.split("/")[0] == kind:
            kept.append(name)
    return sorted(kept)


def vhs_video_files(folder: str) -> list[str]:
    names = [f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))]
    return sorted(n for n in names if "." in n and n.rsplit(".", 1)[1].lower() in VHS_VIDEO_EXTENSIONS)


@dataclass(frozen=True)
class SavePath:
    full_output_folder: str
    filename: str
    counter: int
    subfolder: str


def save_image_path(filename_prefix: str, output_dir: str) -> SavePath:
    """folder_paths.get_save_image_path: the next free ``<prefix>_<5 digits>_`` counter on disk.

    The counter continues from files already in the folder, across restarts (20_kill9_mid_run).
    """
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(full_output_folder))) != output_dir:
        raise Exception(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(full_output_folder)}\n         output_dir: {output_dir}"
        )
    prefix_len = len(filename)
    try:
        existing = os.listdir(full_output_folder)
    except FileNotFoundError:
        os.makedirs(full_output_folder, exist_ok=True)
        existing = []
    counters = [0]
    for name in existing:
        prefix = name[: prefix_len + 1]
        if os.path.normcase(prefix[:-1]) != os.path.normcase(filename) or prefix[-1:] != "_":
            continue
        try:
            counters.append(int(name[prefix_len + 1 :].split("_")[0]))
        except ValueError:
            counters.append(0)
    counter = max(counters) + 1 if len(counters) > 1 else 1
    return SavePath(full_output_folder, filename, counter, subfolder)


def vhs_counter(folder: str, filename: str) -> int:
    """VHS_VideoCombine's own counter: one more than the largest ``<name>_<digits>…`` file in ``folder``."""
    matcher = re.compile(f"{re.escape(filename)}_(\\d+)\\D*\\..+", re.IGNORECASE)
    best = 0
    for existing in os.listdir(folder):
        match = matcher.fullmatch(existing)
        if match:
            best = max(best, int(match.group(1)))
    return best + 1

"""The node catalogue: what /object_info reports and what validation checks against.

Static node descriptions are JSON captured from real servers (``catalog/core_nodes.json`` for ComfyUI's own
nodes, ``catalog/custom_nodes.json`` for the dance workflow's custom nodes). Lists that a real server
computes at request time are filled here: LoadImage/LoadVideo/VHS_LoadVideo list the input folder, and
``--missing-model`` files disappear from every combo list and from /models. The missing set can change
while the server runs (POST /__sim__/models), as a real server's lists follow its model folders: ComfyUI's
``folder_paths.cached_filename_list_`` rescans a folder whose mtime moved, so every /object_info shows a
file added or removed on disk without a restart.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from simulator.paths import Dirs, files_of_kind, vhs_video_files

#: Model folder names GET /models returns, in the recorded order (09_misc_endpoints).
MODEL_FOLDER_NAMES = (
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
)
#: Model files of the recorded core server (09_misc_endpoints: GET /models/upscale_models).
CORE_MODEL_FILES: dict[str, tuple[str, ...]] = {"upscale_models": ("tiny_compact_x2.safetensors",)}
#: Model files a dance worker's ComfyUI holds (shared/reference/README.md, model table).
DANCE_MODEL_FILES: dict[str, tuple[str, ...]] = {
    "diffusion_models": ("Wan21-14B-SCAIL-preview_fp8_e4m3fn_scaled_KJ.safetensors",),
    "clip_vision": ("clip_vision_h.safetensors",),
    "vae": ("Wan2.1_VAE.pth",),
    "text_encoders": ("umt5-xxl-enc-bf16.safetensors",),
    "loras": ("lightx2v_I2V_14B_480p_cfg_step_distill_rank64_bf16.safetensors",),
    "detection": ("vitpose_h_wholebody_model.onnx", "vitpose_h_wholebody_data.bin", "yolov10m.onnx"),
}
#: Inputs whose combo list is the input folder's content, computed per request as ComfyUI does.
INPUT_FOLDER_COMBOS = {
    ("LoadImage", "image"): "image",
    ("LoadImageMask", "image"): "image",
    ("LoadVideo", "file"): "video",
    ("VHS_LoadVideo", "video"): "vhs",
}


def _load_json(name: str, folder: Path | None) -> dict[str, Any]:
    if folder is not None:
        text = (folder / name).read_text(encoding="utf-8")
    else:
        text = resources.files("simulator").joinpath("catalog", name).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


class Catalog:
    """Node descriptions for one simulator process."""

    def __init__(
        self,
        nodes: dict[str, dict[str, Any]],
        model_files: dict[str, tuple[str, ...]],
        dirs: Dirs,
        missing_models: Iterable[str] = (),
    ) -> None:
        self.dirs = dirs
        self._missing_models = frozenset(missing_models)
        self._nodes = nodes
        self._model_files = {folder: list(files) for folder, files in model_files.items()}

    @property
    def missing_models(self) -> frozenset[str]:
        return self._missing_models

    def set_missing_models(self, names: Iterable[str]) -> None:
        """Model files absent from now on (all others present): a folder changed on disk."""
        self._missing_models = frozenset(names)

    @classmethod
    def load(
        cls,
        kind: str,
        dirs: Dirs,
        missing_nodes: Iterable[str] = (),
        missing_models: Iterable[str] = (),
        folder: Path | None = None,
    ) -> Catalog:
        nodes = dict(_load_json("core_nodes.json", folder))
        model_files = dict(CORE_MODEL_FILES)
        if kind == "dance":
            nodes.update(_load_json("custom_nodes.json", folder))
            model_files.update(DANCE_MODEL_FILES)
        for name in missing_nodes:
            nodes.pop(name, None)
        return cls(nodes, model_files, dirs, missing_models)

    def has(self, class_type: Any) -> bool:
        return isinstance(class_type, str) and class_type in self._nodes

    def names(self) -> list[str]:
        return list(self._nodes)

    def is_output(self, class_type: str) -> bool:
        return bool(self._nodes[class_type].get("output_node", False))

    def return_types(self, class_type: str) -> list[Any]:
        return list(self._nodes[class_type]["output"])

    def declared_inputs(self, class_type: str) -> frozenset[str]:
        inputs = self._nodes[class_type]["input"]
        return frozenset(inputs.get("required", {})) | frozenset(inputs.get("optional", {}))

    def hidden_inputs(self, class_type: str) -> dict[str, str]:
        hidden: dict[str, str] = self._nodes[class_type]["input"].get("hidden", {})
        return hidden

    def input_types(self, class_type: str) -> dict[str, Any]:
        """The ``input`` section with input-folder lists filled in, as INPUT_TYPES() would return it."""
        inputs: dict[str, Any] = copy.deepcopy(_without_models(self._nodes[class_type], self._missing_models)["input"])
        for (node_class, input_name), kind in INPUT_FOLDER_COMBOS.items():
            if node_class == class_type and input_name in inputs.get("required", {}):
                entry = inputs["required"][input_name]
                entry[0] = self._folder_listing(kind)
        return inputs

    def info(self, class_type: str) -> dict[str, Any]:
        info = copy.deepcopy(self._nodes[class_type])
        info["input"] = self.input_types(class_type)
        return info

    def all_info(self) -> dict[str, Any]:
        return {name: self.info(name) for name in self._nodes}

    def model_folders(self) -> list[str]:
        extra = [folder for folder in self._model_files if folder not in MODEL_FOLDER_NAMES]
        return list(MODEL_FOLDER_NAMES) + extra

    def model_files(self, folder: str) -> list[str] | None:
        if folder not in self.model_folders():
            return None
        # folder_paths.get_filename_list sorts its result.
        return sorted(f for f in self._model_files.get(folder, []) if f not in self._missing_models)

    def _folder_listing(self, kind: str) -> list[str]:
        listing = vhs_video_files(self.dirs.input_dir) if kind == "vhs" else files_of_kind(self.dirs.input_dir, kind)
        return [name for name in listing if name not in self._missing_models]


def _without_models(info: dict[str, Any], missing: frozenset[str]) -> dict[str, Any]:
    """Drop missing model files from every combo list of one node description."""
    if not missing:
        return info
    info = copy.deepcopy(info)
    for category in ("required", "optional"):
        for entry in info.get("input", {}).get(category, {}).values():
            if isinstance(entry, list) and entry and isinstance(entry[0], list):
                entry[0] = [option for option in entry[0] if option not in missing]
    return info

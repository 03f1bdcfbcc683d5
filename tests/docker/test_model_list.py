"""The shipped model list (docker/models.json) names every file the workflow loads, where its loader looks."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from worker.models import DEFAULT_LIST_PATH, ModelFile, load_model_list
from worker.settings import DEFAULT_WORKFLOW_PATH

#: (node class, input) -> the folder under ComfyUI/models its loader lists (folder_paths names).
LOADER_FOLDERS = {
    ("WanVideoModelLoader", "model"): "diffusion_models",
    ("WanVideoVAELoader", "model_name"): "vae",
    ("WanVideoLoraSelect", "lora"): "loras",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("WanVideoTextEncodeCached", "model_name"): "text_encoders",
    ("OnnxDetectionModelLoader", "vitpose_model"): "detection",
    ("OnnxDetectionModelLoader", "yolo_model"): "detection",
}


def shipped() -> list[ModelFile]:
    return load_model_list(DEFAULT_LIST_PATH)


def workflow_models() -> set[str]:
    """``folder/file`` of every model the bundled workflow names."""
    graph = json.loads(DEFAULT_WORKFLOW_PATH.read_text())
    wanted = set()
    for node in graph.values():
        for name, value in node["inputs"].items():
            folder = LOADER_FOLDERS.get((node["class_type"], name))
            if folder is not None:
                wanted.add(f"{folder}/{value}")
        if node["class_type"] == "DownloadAndLoadNLFModel":
            # The node loads models/nlf/<basename of the URL> and downloads only when it is absent
            # (ComfyUI-WanVideoWrapper MTV/nodes.py: local_model_path), so offline clusters need it there.
            wanted.add("nlf/" + PurePosixPath(urlsplit(node["inputs"]["url"]).path).name)
    return wanted


def test_the_shipped_list_is_valid() -> None:
    # Given / When the list is loaded with the command's own validation
    models = shipped()
    # Then it holds entries (the loader raises on any malformed one)
    assert models


def test_every_model_the_workflow_loads_is_listed_in_the_folder_its_loader_reads() -> None:
    # Given the models the bundled workflow names, mapped to their loaders' folders
    wanted = workflow_models()
    # When the shipped list is read
    listed = {model.relpath for model in shipped()}
    # Then each of them is listed exactly there, and nothing else is
    assert wanted, "the workflow names no models?"
    assert listed == wanted | {"detection/vitpose_h_wholebody_data.bin"}


def test_clip_vision_goes_to_clip_vision_where_clipvisionloader_looks() -> None:
    # Given the shipped list
    by_file = {model.file: model for model in shipped()}
    # Then CLIP vision is under clip_vision/, not clip/ (the old build's mistake)
    assert by_file["clip_vision_h.safetensors"].folder == "clip_vision"


def test_the_vitpose_weights_sit_beside_the_onnx_model_that_loads_them() -> None:
    # Given the shipped list
    by_file = {model.file: model for model in shipped()}
    # Then the external-data .bin shares the .onnx's folder, so onnxruntime finds it
    assert by_file["vitpose_h_wholebody_data.bin"].folder == by_file["vitpose_h_wholebody_model.onnx"].folder


def test_hugging_face_urls_resolve_files_instead_of_serving_pages() -> None:
    # Given every Hugging Face URL of the list
    urls = [model.url for model in shipped() if urlsplit(model.url).hostname == "huggingface.co"]
    # Then each is a /resolve/ URL (a /blob/ URL returns an HTML page)
    assert urls
    assert all("/resolve/" in url and "/blob/" not in url for url in urls)


def test_every_entry_is_pinned_or_says_plainly_that_it_is_not() -> None:
    # Given the raw entries
    raw = json.loads(Path(DEFAULT_LIST_PATH).read_text())["models"]
    # Then an entry without a sha256 or size explains itself in its source note
    for item in raw:
        if item["sha256"] is None or item["size_bytes"] is None:
            assert item["source"].startswith("not pinned"), item["file"]
        else:
            assert item["source"], item["file"]

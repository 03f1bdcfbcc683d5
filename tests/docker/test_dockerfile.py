"""docker/Dockerfile, read line by line: pins, no model files, non-root under tini, stop and health."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.docker.deployment import (
    COMPOSE,
    CUSTOM_NODES,
    HEX40,
    ROOT,
    build_args,
    dockerfile_instructions,
    env_of_stage,
    raw_compose,
    stage,
)

#: The stages that become images; the others only build.
FINAL_STAGES = ("gpu", "cpu")
#: Extensions of model weights (ComfyUI's supported_pt_extensions plus ONNX, TorchScript and ONNX data).
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".gguf", ".onnx", ".torchscript", ".sft")
#: Commands that fetch files from the network inside a RUN.
DOWNLOADERS = re.compile(r"\b(wget|curl|aria2c|huggingface-cli|hf download|dance models|hf_hub_download)\b")


def custom_node_pins() -> list[tuple[str, str, str]]:
    lines = [line.split() for line in CUSTOM_NODES.read_text().splitlines() if line.strip()
             and not line.startswith("#")]
    return [(name, url, commit) for name, url, commit in lines]


def test_comfyui_is_pinned_to_a_full_commit() -> None:
    # Given the build arguments
    args = build_args()
    # Then ComfyUI comes from its upstream repository at a 40-hex commit, never a branch or tag
    assert args["COMFYUI_REPO"] == "https://github.com/comfyanonymous/ComfyUI"
    assert HEX40.fullmatch(args["COMFYUI_COMMIT"])
    assert any("fetch-pinned.sh" in item.arguments and "${COMFYUI_COMMIT}" in item.arguments
               for item in stage("gpu-build") if item.keyword == "RUN")


def test_every_custom_node_pack_is_pinned_to_a_full_commit_and_installed_with_its_requirements() -> None:
    # Given the pack list the image installs
    pins = custom_node_pins()
    # Then every pack has a 40-hex commit, the five packs the workflow needs are there, and the image runs
    # the installer that checks each out and installs its requirements.txt
    assert {name for name, _, _ in pins} >= {"ComfyUI-WanVideoWrapper", "ComfyUI-SCAIL-Pose", "ComfyUI-KJNodes",
                                               "ComfyUI-VideoHelperSuite", "ComfyUI-WanAnimatePreprocess"}
    assert all(HEX40.fullmatch(commit) and url.startswith("https://github.com/") for _, url, commit in pins)
    runs = " ".join(item.arguments for item in stage("gpu-build") if item.keyword == "RUN")
    assert "install-custom-nodes.sh /tmp/build/custom-nodes.txt /opt/ComfyUI/custom_nodes" in runs
    assert "requirements.txt" in (ROOT / "docker" / "install-custom-nodes.sh").read_text()


@pytest.mark.parametrize("commit", ["master", "v0.12.3", "cb459573", "CB459573C8FA025BBF9ECF312F6AF376D659F567"])
def test_the_pinned_checkout_refuses_anything_but_a_full_commit(commit: str, tmp_path: Path) -> None:
    # When fetch-pinned.sh is given a branch, a tag or a short id, then it stops before touching the network
    result = subprocess.run(["bash", str(ROOT / "docker" / "fetch-pinned.sh"), "https://example.invalid/x.git",
                             commit, f"{tmp_path}/x"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 64
    assert "40-hex" in result.stderr


def test_no_model_file_is_copied_or_downloaded_into_an_image() -> None:
    for item in dockerfile_instructions():
        # Then no COPY or ADD brings a weight file, ADD never fetches a URL, and no RUN downloads anything
        # but code (git) and packages (pip, apt)
        if item.keyword in {"COPY", "ADD"}:
            assert not any(ext in item.arguments for ext in MODEL_EXTENSIONS), item
        if item.keyword == "ADD":
            assert "://" not in item.arguments, item
        if item.keyword == "RUN":
            assert not DOWNLOADERS.search(item.arguments), item
    ignored = (ROOT / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    assert all(f"**/*{ext}" in ignored for ext in (".safetensors", ".onnx", ".pth", ".bin", ".torchscript"))


def test_models_live_on_a_volume_the_image_only_points_at() -> None:
    # Given the GPU image's environment and the compose file
    env = env_of_stage("gpu")
    services = raw_compose(COMPOSE)["services"]
    # Then `dance models` and ComfyUI agree on the folder, and compose mounts the models volume there
    assert env["COMFYUI_MODELS_DIR"] == "/opt/ComfyUI/models"
    assert env["COMFYUI_HOME"] + "/models" == env["COMFYUI_MODELS_DIR"]
    assert "models:/opt/ComfyUI/models:ro" in services["worker-gpu0"]["volumes"]


@pytest.mark.parametrize("name", FINAL_STAGES)
def test_each_image_runs_as_a_non_root_user_under_tini(name: str) -> None:
    # Given the last USER and the ENTRYPOINT of a final stage
    items = stage(name)
    user = [item.arguments for item in items if item.keyword == "USER"][-1]
    (entrypoint,) = [item.arguments for item in items if item.keyword == "ENTRYPOINT"]
    uid = build_args()["DANCE_UID"]
    # Then the user is the unprivileged uid, and tini is PID 1 in front of the entrypoint script
    assert user == "${DANCE_UID}:${DANCE_UID}" and int(uid) >= 1000
    assert entrypoint == '["/usr/bin/tini", "--", "/usr/local/bin/dance-entrypoint"]'


@pytest.mark.parametrize("name", FINAL_STAGES)
def test_each_image_stops_on_sigterm_and_reports_health_with_dance_check(name: str) -> None:
    items = stage(name)
    (stop,) = [item.arguments for item in items if item.keyword == "STOPSIGNAL"]
    (health,) = [item.arguments for item in items if item.keyword == "HEALTHCHECK"]
    # tini passes SIGTERM to the entrypoint alone, which drains the worker before stopping ComfyUI
    assert stop == "SIGTERM"
    assert health.endswith('CMD ["dance", "check"]')


def test_the_gpu_image_requires_a_gpu_and_shares_comfyuis_folders_with_the_worker() -> None:
    env = env_of_stage("gpu")
    assert env["COMFYUI_REQUIRE_GPU"] == "1"
    # and it warms up before ready, with the sample media demo/ makes, so no first job pays for model loading
    assert env["DANCE_WARMUP"] == "on"
    copies = " ".join(item.arguments for item in stage("gpu-build") if item.keyword == "COPY")
    assert "demo /src/demo" in copies
    assert env["COMFYUI_BACKEND"] == "comfyui"
    assert env["COMFYUI_INPUT_DIR"] == "/data/comfyui/input"
    assert env["COMFYUI_OUTPUT_DIR"] == "/data/comfyui/output"


def test_the_cpu_image_puts_the_simulator_where_comfyui_would_be() -> None:
    env = env_of_stage("cpu")
    assert env["COMFYUI_BACKEND"] == "simulator"
    assert env["COMFYUI_REQUIRE_GPU"] == "0"
    assert env["DANCE_WARMUP"] == "off"
    assert env["COMFYUI_URL"] == env_of_stage("gpu")["COMFYUI_URL"]
    runs = " ".join(item.arguments for item in stage("cpu-build") if item.keyword == "RUN")
    assert "[worker,simulator,flower,gateway]" in runs


def test_base_images_and_service_images_are_pinned_to_versions() -> None:
    # Given the base images and every third-party image of the compose file
    args = build_args()
    images = [args["CUDA_IMAGE"], args["PYTHON_IMAGE"]]
    images += [spec["image"] for spec in raw_compose(COMPOSE)["services"].values()
               if not str(spec["image"]).startswith("${")]
    # Then each names a version tag with digits, never latest or a bare name
    for image in images:
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert re.search(r"\d", tag) and "latest" not in tag, image


def test_the_worker_is_installed_from_this_repository_with_its_constraints() -> None:
    runs = " ".join(item.arguments for item in stage("gpu-build") if item.keyword == "RUN")
    assert '-c /src/constraints.txt "/src[worker]"' in runs
    copies = [item.arguments for item in stage("gpu-build") if item.keyword == "COPY"]
    assert "pyproject.toml README.md constraints.tx[t] /src/" in copies


def test_the_cpu_image_carries_the_gateway_the_compose_file_runs_from_it() -> None:
    # Given the compose services whose command is `dance gateway`, and the cpu build stage
    services = raw_compose(COMPOSE)["services"]
    gateways = [spec for spec in services.values() if spec.get("command") == ["dance", "gateway"]]
    copies = [item.arguments for item in stage("cpu-build") if item.keyword == "COPY"]
    runs = " ".join(item.arguments for item in stage("cpu-build") if item.keyword == "RUN")
    # Then they run the cpu image, which copies the gateway package and installs the extra it imports
    assert gateways and all(spec["build"]["target"] == "cpu" for spec in gateways)
    assert "gateway /src/gateway" in copies
    extras = re.search(r'"/src\[([a-z,]+)\]"', runs)
    assert extras is not None and "gateway" in extras.group(1).split(",")
    assert "gateway" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_every_folder_an_image_copies_passes_the_build_context_filter() -> None:
    # Given the build context filter, which lets through only what it names after its leading `**`
    allowed = {line.removeprefix("!").removesuffix("/**")
               for line in (ROOT / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    # When every COPY from the context (not from another stage) is read
    for item in dockerfile_instructions():
        if item.keyword != "COPY" or "--from=" in item.arguments:
            continue
        sources = [word for word in item.arguments.split() if not word.startswith("--")][:-1]
        for source in sources:
            # Then its top-level folder or file is let through, or the build would fail (or ship without it);
            # a one-character class like constraints.tx[t] is the file it matches
            top = re.sub(r"\[(.)\]", r"\1", source).split("/", 1)[0]
            assert top in allowed, (item, source)

"""The dance workflow runs on the simulator's dance catalogue and produces a real, playable MP4."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.comfysim import ComfySim, Frame, WsRecorder
from tests.simulator.dance_media import bound_workflow, decode_video, reference_png, write_clip

#: Workflow nodes: the sampler, the video combine and the clip loader (worker/workflows/dance_scail.json).
SAMPLER, COMBINE, LOADER = "348", "139", "130"
#: Simulated sampler time for these tests, in seconds.
FAST_EXEC_S = 0.2
HTTP_TIMEOUT_S = 30.0


def upload(sim: ComfySim, name: str, body: bytes, kind: str) -> dict[str, Any]:
    response = requests.post(f"{sim.url}/upload/image", files={"image": (name, body, kind)}, timeout=HTTP_TIMEOUT_S)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def dance_values(**overrides: Any) -> dict[str, Any]:
    # Numbers arrive as strings, as the original endpoint sent them; ComfyUI coerces them.
    values = {
        "reference_image_filename": "ref.png",
        "dance_video_filename": "clip.mp4",
        "prompt": "a dancer",
        "negative_prompt": "blurry",
        "width": "128",
        "height": "192",
        "steps": "3",
        "cfg": "1.0",
        "seed": "7",
        "output_prefix": "dance/JOB1/dance",
    }
    values.update(overrides)
    return values


def run_dance(
    sim: ComfySim,
    tmp_path: Path,
    frames: int = 12,
    audio: bool = False,
    edit: Callable[[dict[str, Any]], None] | None = None,
    **overrides: Any,
) -> tuple[str, list[Frame]]:
    upload(sim, "ref.png", reference_png(), "image/png")
    upload(sim, "clip.mp4", write_clip(tmp_path / "clip.mp4", frames, audio=audio).read_bytes(), "video/mp4")
    workflow = bound_workflow(dance_values(**overrides))
    if edit is not None:
        edit(workflow)
    socket = WsRecorder(sim.ws_url, "dance-client")
    try:
        response = requests.post(
            f"{sim.url}/prompt",
            json={"prompt": workflow, "client_id": "dance-client"},
            timeout=HTTP_TIMEOUT_S,
        )
        assert response.status_code == 200, response.text
        prompt_id = response.json()["prompt_id"]
        return prompt_id, socket.wait_done(prompt_id)
    finally:
        socket.close()


def history_of(sim: ComfySim, prompt_id: str) -> dict[str, Any]:
    entry: dict[str, Any] = requests.get(f"{sim.url}/history/{prompt_id}", timeout=HTTP_TIMEOUT_S).json()[prompt_id]
    return entry


def fetch_output(sim: ComfySim, item: dict[str, Any], path: Path) -> Path:
    params = {"filename": item["filename"], "subfolder": item["subfolder"], "type": item["type"]}
    response = requests.get(f"{sim.url}/view", params=params, timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "video/mp4"
    path.write_bytes(response.content)
    return path


def progress_of(frames: list[Frame], node: str) -> list[tuple[float, int]]:
    return [
        (f.json["data"]["value"], f.json["data"]["max"])
        for f in frames
        if f.type == "progress" and f.json["data"]["node"] == node
    ]


def test_dance_workflow_writes_a_playable_mp4_reported_under_gifs(comfysim: Any, tmp_path: Path) -> None:
    # Given a dance simulator, an uploaded reference image and a 12-frame clip
    sim = comfysim(exec_s=FAST_EXEC_S)
    # When the bound workflow runs
    prompt_id, _ = run_dance(sim, tmp_path)
    # Then it succeeds, and VHS_VideoCombine reports one mp4 under "gifs" like the real node
    entry = history_of(sim, prompt_id)
    assert entry["status"]["status_str"] == "success"
    (item,) = entry["outputs"][COMBINE]["gifs"]
    assert item["filename"] == "dance_00001.mp4"
    assert item["subfolder"] == "dance/JOB1"
    assert (item["type"], item["format"], item["frame_rate"]) == ("output", "video/h264-mp4", 24.0)
    assert item["workflow"] == "dance_00001.png"
    assert item["fullpath"].endswith("output/dance/JOB1/dance_00001.mp4")
    # And the file is an h264 video of the bound size with one frame per clip frame
    width, height, count, has_audio = decode_video(fetch_output(sim, item, tmp_path / "out.mp4"))
    assert (width, height, count, has_audio) == (128, 192, 12, False)
    # And numeric strings were coerced in the stored prompt, as ComfyUI does
    assert entry["prompt"][2]["203"]["inputs"]["value"] == 128


def test_sampler_reports_weight_loading_then_one_progress_per_step(comfysim: Any, tmp_path: Path) -> None:
    sim = comfysim(exec_s=FAST_EXEC_S)
    _, frames = run_dance(sim, tmp_path, steps="4")
    ticks = progress_of(frames, SAMPLER)
    # The first run loads weights (about a thousand ticks, then a reset to 0), then ticks each step
    assert ticks[-5] == (0, ticks[0][1])
    assert ticks[-4:] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert progress_of(frames, COMBINE) == [(n, 12) for n in range(1, 13)]
    assert progress_of(frames, LOADER) == [(n, 12) for n in range(1, 13)]


def test_clip_with_sound_is_reported_as_the_audio_file(comfysim: Any, tmp_path: Path) -> None:
    sim = comfysim(exec_s=FAST_EXEC_S)
    prompt_id, _ = run_dance(sim, tmp_path, audio=True)
    (item,) = history_of(sim, prompt_id)["outputs"][COMBINE]["gifs"]
    assert item["filename"] == "dance_00001-audio.mp4"
    width, height, count, has_audio = decode_video(fetch_output(sim, item, tmp_path / "out.mp4"))
    assert (width, height, count, has_audio) == (128, 192, 12, True)


def test_combine_with_save_output_false_writes_to_temp(comfysim: Any, tmp_path: Path) -> None:
    def preview_only(workflow: dict[str, Any]) -> None:
        workflow[COMBINE]["inputs"]["save_output"] = False

    sim = comfysim(exec_s=FAST_EXEC_S)
    prompt_id, _ = run_dance(sim, tmp_path, edit=preview_only)
    (item,) = history_of(sim, prompt_id)["outputs"][COMBINE]["gifs"]
    assert item["type"] == "temp"
    assert (sim.data_dir / "temp" / "dance" / "JOB1" / "dance_00001.mp4").exists()
    assert decode_video(fetch_output(sim, item, tmp_path / "out.mp4"))[2] == 12


def test_the_driving_clip_is_retimed_and_capped_like_vhs_load_video(comfysim: Any, tmp_path: Path) -> None:
    # Given a clip that force_rate doubles (12 -> 24 frames) and a cap of 10 frames
    def cap_ten(workflow: dict[str, Any]) -> None:
        workflow[LOADER]["inputs"]["frame_load_cap"] = 10
        workflow[LOADER]["inputs"]["force_rate"] = 48

    sim = comfysim(exec_s=FAST_EXEC_S)
    prompt_id, _ = run_dance(sim, tmp_path, edit=cap_ten)
    (item,) = history_of(sim, prompt_id)["outputs"][COMBINE]["gifs"]
    assert decode_video(fetch_output(sim, item, tmp_path / "out.mp4"))[2] == 10


def test_identical_resubmission_is_served_from_the_cache(comfysim: Any, tmp_path: Path) -> None:
    sim = comfysim(exec_s=FAST_EXEC_S)
    first_id, _ = run_dance(sim, tmp_path)
    second_id, frames = run_dance(sim, tmp_path)
    cached = next(f.json["data"]["nodes"] for f in frames if f.type == "execution_cached")
    assert SAMPLER in cached and COMBINE in cached
    assert [f.type for f in frames if f.type in ("executing", "executed", "progress")] == [
        "executed",
        "executing",
    ]
    assert history_of(sim, second_id)["outputs"] == history_of(sim, first_id)["outputs"]


def test_missing_nodes_and_models_disappear_from_object_info(comfysim: Any) -> None:
    # Given a server without the sampler class and without the VAE file
    sim = comfysim(missing_node=["WanVideoSamplerv2"], missing_model=["Wan2.1_VAE.pth"])
    info = requests.get(f"{sim.url}/object_info", timeout=HTTP_TIMEOUT_S).json()
    # Then /object_info no longer lists them, and a prompt needing them is rejected as ComfyUI would
    assert "WanVideoSamplerv2" not in info and "VHS_VideoCombine" in info
    assert info["WanVideoVAELoader"]["input"]["required"]["model_name"][0] == []
    assert requests.get(f"{sim.url}/models/vae", timeout=HTTP_TIMEOUT_S).json() == []
    response = requests.post(
        f"{sim.url}/prompt", json={"prompt": bound_workflow(dance_values())}, timeout=HTTP_TIMEOUT_S
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Cannot execute because node WanVideoSamplerv2 does not exist."


def test_a_model_file_removed_and_put_back_while_the_server_runs_follows_the_disk(comfysim: Any) -> None:
    # Given a running server with every model of the dance workflow
    sim = comfysim()

    def vae_choices() -> list[str]:
        info = requests.get(f"{sim.url}/object_info", timeout=HTTP_TIMEOUT_S).json()
        return list(info["WanVideoVAELoader"]["input"]["required"]["model_name"][0])

    assert vae_choices() == ["Wan2.1_VAE.pth"]
    # When the VAE file goes from its folder, as ComfyUI's mtime-checked model lists see at the next request
    sim.request("POST", "/__sim__/models", {"missing": ["Wan2.1_VAE.pth"]})
    # Then /object_info, /models and validation no longer offer it
    assert vae_choices() == []
    assert requests.get(f"{sim.url}/models/vae", timeout=HTTP_TIMEOUT_S).json() == []
    rejected = requests.post(f"{sim.url}/prompt", json={"prompt": bound_workflow(dance_values())},
                             timeout=HTTP_TIMEOUT_S)
    assert rejected.status_code == 400
    # and once it is back, all three offer it again
    sim.request("POST", "/__sim__/models", {"missing": []})
    assert vae_choices() == ["Wan2.1_VAE.pth"]
    assert requests.get(f"{sim.url}/models/vae", timeout=HTTP_TIMEOUT_S).json() == ["Wan2.1_VAE.pth"]


@pytest.mark.parametrize(("device", "kind"), [("cpu", "cpu"), ("cuda", "cuda")])
def test_system_stats_describe_the_simulated_device(comfysim: Any, device: str, kind: str) -> None:
    sim = comfysim(device=device, catalog="core")
    stats = requests.get(f"{sim.url}/system_stats", timeout=HTTP_TIMEOUT_S).json()
    (entry,) = stats["devices"]
    assert entry["type"] == kind
    assert set(entry) == {
        "name",
        "type",
        "index",
        "vram_total",
        "vram_free",
        "torch_vram_total",
        "torch_vram_free",
    }
    assert stats["system"]["comfyui_version"] == "0.3.39"
    if kind == "cuda":
        assert entry["name"].startswith("cuda:0 NVIDIA H100") and entry["index"] == 0

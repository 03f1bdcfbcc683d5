"""A dance job end to end: producer → Redis → gated worker → simulated ComfyUI → storage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, cast

import av
import pytest
import requests

from producer import errors
from tests.fixtures.workers import Cluster
from tests.support.jobs import SAMPLE_HEIGHT_PX, SAMPLE_WIDTH_PX, dance_request
from tests.support.processes import wait_until


def video_frames(path: Path) -> tuple[int, int, int]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return len(frames), frames[0].width, frames[0].height


def test_a_dance_job_yields_a_playable_video_a_manifest_and_a_complete_result(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a ready worker and a ComfyUI whose input folder it shares, whose sampler is held after step 2 of 4
    sim = comfysim(exec_s=0.4)
    sim.faults({"hold": True, "hold_at_progress": "2/4"})
    cluster.start_worker("w", sim.url, COMFYUI_INPUT_DIR=str(sim.data_dir / "input"),
                         COMFYUI_OUTPUT_DIR=str(sim.data_dir / "output"))
    progress: list[dict[str, Any]] = []
    # When a job is submitted and followed
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path, steps=4), job_id="job-e2e-1")

        def at_sampler_step() -> dict[str, Any] | None:
            info = handle.progress()
            return info if info and info.get("max") == 4 and info["stage"] == "executing" else None

        progress.append(cast(dict[str, Any], wait_until(at_sampler_step, 30, "the sampler step in the progress")))
        sim.release()
        result = handle.result(timeout_s=60, on_progress=lambda state, info: info and progress.append(info))
    # Then the result has every promised field
    assert result["job_id"] == "job-e2e-1" and result["status"] == "succeeded"
    assert result["seed"] == 1234 and result["params"]["steps"] == 4
    assert set(result["timings"]) == {"queued_s", "download_s", "execute_s", "upload_s", "total_s"}
    assert result["worker"]["device"] and result["comfyui"]["prompt_id"]
    # and the video is a real MP4 of the requested size, whose bytes match the recorded sha256
    video = next(item for item in result["outputs"] if item["kind"] == "video")
    path = Path(video["uri"].removeprefix("file://"))
    assert path.parent.name == "job-e2e-1" and video["content_type"] == "video/mp4"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == video["sha256"] and path.stat().st_size == video["bytes"]
    frames, width, height = video_frames(path)
    assert frames > 0 and (width, height) == (SAMPLE_WIDTH_PX, SAMPLE_HEIGHT_PX)
    # and the manifest, written last, holds the same outputs
    manifest = json.loads(Path(result["manifest"]["uri"].removeprefix("file://")).read_text())
    assert manifest["outputs"] == result["outputs"]
    # and progress reached the producer, step by step, with node and percent
    sampler_steps = [p for p in progress if p.get("max") == 4 and p["stage"] == "executing"]
    assert sampler_steps and sampler_steps[-1]["node"] == "348"
    assert all(0 < p["percent"] <= 100 for p in sampler_steps)
    # and ComfyUI soon keeps nothing of the job: no history entry, no uploaded input, no output file
    prompt_id = result["comfyui"]["prompt_id"]
    wait_until(lambda: requests.get(f"{sim.url}/history/{prompt_id}", timeout=5).json() == {}, 10,
               "the history entry to be deleted")
    wait_until(lambda: not [p for p in (sim.data_dir / "input").iterdir() if "job-e2e-1" in p.name], 10,
               "the uploaded inputs to be deleted")
    wait_until(lambda: not [p for p in (sim.data_dir / "output").rglob("*") if "job-e2e-1" in p.name], 10,
               "the job's output folder to be deleted")


def test_the_prompt_reaches_comfyui_unchanged_with_the_negative_prompt_and_typed_numbers(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a prompt with quotes, newlines, unicode and a literal placeholder
    tricky = 'she said "dance"\n{{seed}} 跳舞 \\ {{ width }}'
    sim = comfysim(exec_s=0.1)
    cluster.start_worker("w", sim.url)
    with cluster.client() as client:
        request = dance_request(media_server, tmp_path, prompt=tricky, negative_prompt="no hats", cfg=2.5)
        result = client.submit(request).result(timeout_s=60)
    # Then ComfyUI received it as typed JSON values, untouched (read back from the simulator's log of prompts)
    prompt = sim.last_prompt()
    assert prompt["368"]["inputs"]["positive_prompt"] == tricky
    assert prompt["368"]["inputs"]["negative_prompt"] == "no hats"
    assert prompt["238"]["inputs"]["value"] == 2.5 and prompt["348"]["inputs"]["seed"] == result["seed"]
    assert prompt["203"]["inputs"]["value"] == SAMPLE_WIDTH_PX


def test_a_video_output_lands_in_s3_with_a_presigned_url_that_serves_it(
    cluster: Cluster, comfysim: Any, media_server: Any, s3_server: Any, tmp_path: Path
) -> None:
    # Given a worker whose storage is a real S3 server with auth
    sim = comfysim(exec_s=0.1)
    env = {k: v for k, v in s3_server.env.items() if k != "AWS_MAX_ATTEMPTS"}
    worker = cluster.start_worker("w", sim.url, DANCE_STORAGE_URL=f"s3://{s3_server.bucket}/results", **env)
    # When a job runs
    with cluster.client() as client:
        result = client.submit(dance_request(media_server, tmp_path), job_id="job-s3-1").result(timeout_s=60)
    # Then its video is an object under <prefix>/<job_id>/ whose presigned URL serves the same bytes
    video = next(item for item in result["outputs"] if item["kind"] == "video")
    assert video["uri"].startswith(f"s3://{s3_server.bucket}/results/job-s3-1/")
    body = requests.get(video["url"], timeout=10).content
    assert hashlib.sha256(body).hexdigest() == video["sha256"] and len(body) == video["bytes"]
    assert body[4:8] == b"ftyp"
    # and the URL really is signed: without its signature S3 refuses
    assert requests.get(video["url"].split("?")[0], timeout=10).status_code == 403
    manifest = s3_server.client().get_object(Bucket=s3_server.bucket, Key="results/job-s3-1/manifest.json")
    assert json.loads(manifest["Body"].read())["job_id"] == "job-s3-1"
    # and the signed URL, a credential for the object, never reaches the worker's log
    assert "succeeded in" in worker.log() and "Signature=" not in worker.log()


def test_local_files_given_to_the_producer_are_put_into_storage_first(
    cluster: Cluster, comfysim: Any, tmp_path: Path
) -> None:
    # Given sample media on the producer's disk
    from tests.support.jobs import sample_media

    image, video = sample_media(tmp_path / "local")
    sim = comfysim(exec_s=0.1)
    cluster.start_worker("w", sim.url)
    request = {"reference_image": str(tmp_path / "local" / "character.png"),
               "dance_video": str(tmp_path / "local" / "dance.mp4"), "prompt": "dance",
               "width": SAMPLE_WIDTH_PX, "height": SAMPLE_HEIGHT_PX}
    # When it is submitted with local paths
    with cluster.client() as client:
        result = client.submit(request, job_id="job-local-1").result(timeout_s=60)
    # Then the job ran on the staged copies
    assert result["status"] == "succeeded"
    staged = Path(cluster.storage_url.removeprefix("file://")) / "job-local-1" / "inputs"
    assert (staged / "reference_image.png").read_bytes() == image
    assert (staged / "dance_video.mp4").read_bytes() == video


def test_submitting_the_same_job_id_twice_runs_the_job_once(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    sim = comfysim(exec_s=0.1)
    cluster.start_worker("w", sim.url)
    request = dance_request(media_server, tmp_path)
    with cluster.client() as client:
        first = client.submit(request, job_id="job-twice")
        second = client.submit(request, job_id="job-twice")
        assert first.result(timeout_s=60) == second.result(timeout_s=60)
    assert sim.state()["prompts_received"] == 1


@pytest.mark.parametrize(
    ("route", "kind", "code"),
    [
        ({"status": 404}, "image", errors.INPUT_NOT_FOUND),
        ({"status": 403}, "video", errors.INPUT_FORBIDDEN),
        ({"body": b"<html>not an image</html>"}, "image", errors.INPUT_NOT_MEDIA),
        ("video-as-image", "image", errors.INPUT_WRONG_KIND),
        ({"body": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40}, "image", errors.INPUT_CORRUPT),
    ],
    ids=["404", "403", "html", "wrong-kind", "truncated-png"],
)
def test_a_bad_input_fails_the_job_with_its_code_and_the_worker_goes_on(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path, route: Any, kind: str, code: str
) -> None:
    sim = comfysim(exec_s=0.1)
    cluster.start_worker("w", sim.url)
    request = dance_request(media_server, tmp_path)
    field = "reference_image" if kind == "image" else "dance_video"
    if route == "video-as-image":
        request[field] = request["dance_video"]
    else:
        body = route.pop("body", b"")
        request[field] = media_server.serve(f"/bad-{field}", body, **route)
    with cluster.client() as client:
        # When the job runs, it fails with the input's code
        with pytest.raises(errors.DanceError) as raised:
            client.submit(request).result(timeout_s=60)
        assert raised.value.code == code
        # and the same worker still completes the next job
        assert client.submit(dance_request(media_server, tmp_path)).result(timeout_s=60)["status"] == "succeeded"
    assert sim.state()["prompts_received"] == 1

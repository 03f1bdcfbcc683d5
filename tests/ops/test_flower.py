"""Flower shows live progress, results, readiness and the dance metrics (rendered by headless Chromium)."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from producer.errors import INPUT_NOT_FOUND, DanceError
from tests.fixtures.workers import Cluster
from tests.support.browser import ARTIFACTS, Flower, render, start_flower
from tests.support.jobs import dance_request
from tests.support.ops import start_gpu_worker
from tests.support.processes import wait_until

#: The signed-URL token the producer must keep out of Flower.
SECRET_TOKEN = "X-Amz-Signature=do-not-show-me"
#: What the task's result field says at the sampler's held step.
SAMPLER_PROGRESS = re.compile(r"executing node 348 \(WanVideoSamplerv2\): 2/4 \(50\.0%\)")


def test_flower_shows_a_running_jobs_progress_then_its_result_without_secrets(
    cluster: Cluster, comfysim: Any, media_server: Any, s3_server: Any, tmp_path: Path
) -> None:
    # Given a worker whose sampler is held right after step 2 of 4 and whose results go to S3 (presigned
    # URLs), Flower, and media behind signed URLs
    sim = comfysim(exec_s=0.4)
    sim.faults({"hold": True, "hold_at_progress": "2/4"})
    s3_env = {k: v for k, v in s3_server.env.items() if k != "AWS_MAX_ATTEMPTS"}
    start_gpu_worker(cluster, "w", sim.url, DANCE_STORAGE_URL=f"s3://{s3_server.bucket}/results", **s3_env)
    flower = start_flower(cluster, sim.url)
    # (once Flower hears the worker, it cannot miss the job's task-received event, which carries the arguments)
    wait_until(lambda: flower.hears("w@"), 30, "Flower to hear the worker's heartbeat")
    request = dance_request(media_server, tmp_path, steps=4)
    request["reference_image"] += "?" + SECRET_TOKEN
    with cluster.client() as client:
        handle = client.submit(request, job_id="flower-1")

        def percent_in_flower() -> bool:
            info = flower.task("flower-1")
            return info.get("state") == "PROGRESS" and bool(SAMPLER_PROGRESS.search(str(info.get("result"))))

        wait_until(percent_in_flower, 30, "Flower to receive the sampler's step 2")
        # When an operator opens the task page while the sampler is held (so the page cannot race the job's end)
        page = html.unescape(render(flower.url("/task/flower-1", True), ARTIFACTS / "flower-task-progress.png"))
        # Then it shows the PROGRESS state, the node and the percent, and the arguments without the token
        assert "PROGRESS" in page and SAMPLER_PROGRESS.search(page), page[-3000:]
        assert "reference_image" in page and "do-not-show-me" not in page
        sim.release()
        # and once the job ends, the page shows its result, with the outputs' locations but not the signatures
        # that the producer's result holds
        video = next(item for item in handle.result(timeout_s=30)["outputs"] if item["kind"] == "video")
        assert "X-Amz-Signature=" in video["url"]
        wait_until(lambda: flower.task("flower-1").get("state") == "SUCCESS", 30,
                   "Flower to receive the success event")
        page = html.unescape(render(flower.url("/task/flower-1", True), ARTIFACTS / "flower-task-done.png"))
        assert "SUCCESS" in page and "'status': 'succeeded'" in page
        assert video["url"].split("?")[0] in page and "X-Amz-" not in page


def test_flower_shows_a_waiting_worker_as_not_ready_and_serves_the_dance_metrics(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a ready worker that ran one good job (1 s on the GPU) and one failing job, a worker whose
    # ComfyUI lacks a node class, and Flower
    sim = comfysim(exec_s=1.0)
    start_gpu_worker(cluster, "w", sim.url)
    lacking = comfysim(exec_s=0.1, missing_node=["WanVideoSamplerv2"])
    start_gpu_worker(cluster, "waiting", lacking.url)
    flower = start_flower(cluster, sim.url)
    request = dance_request(media_server, tmp_path)
    with cluster.client() as client:
        client.submit(request, job_id="metrics-ok").result(timeout_s=30)
        gone = {**request, "dance_video": media_server.serve("/gone.mp4", b"", status=404)}
        with pytest.raises(DanceError):
            client.submit(gone, job_id="metrics-failed").result(timeout_s=30)
    # When an operator opens the waiting worker's page (once Flower's inspect has reached that worker)
    def waiting_worker_stats() -> str | None:
        workers = flower.workers()
        return next((name for name, info in workers.items()
                     if name.startswith("waiting@") and "dance_readiness" in info.get("stats", {})), None)

    waiting = str(wait_until(waiting_worker_stats, 30, "Flower to list the waiting worker's stats"))
    page = html.unescape(render(flower.url(f"/worker/{waiting}", True), ARTIFACTS / "flower-worker-waiting.png"))
    # Then it says the worker is not ready and waits for ComfyUI, and lists no active queue
    assert "dance_readiness" in page and "not ready: waiting for ComfyUI" in page
    assert re.search(r'<tbody id="worker-queues">\s*</tbody>', page)
    # and /metrics has readiness, jobs by outcome and code, stage histograms, VRAM and queue depths
    ready = waiting.replace("waiting@", "w@")
    failed = ("dance_jobs_total", _labels(code=INPUT_NOT_FOUND, outcome="failed", worker=ready))

    def with_failed_job() -> Samples | None:
        got = _samples(flower)
        return got if failed in got else None

    found: Samples = wait_until(with_failed_job, 30, "the failed job in the metrics")  # type: ignore[assignment]
    assert found[("dance_worker_ready", _labels(worker=ready))] == 1.0
    assert found[("dance_worker_ready", _labels(worker=waiting))] == 0.0
    assert found[("dance_worker_ready_seconds", _labels(worker=ready))] > 0
    assert found[("dance_jobs_total", _labels(code="", outcome="succeeded", worker=ready))] == 1.0
    assert found[("dance_stage_duration_seconds_count", _labels(stage="execute", worker=ready))] == 1.0
    assert found[("dance_stage_duration_seconds_bucket", _labels(le="+Inf", stage="download", worker=ready))] == 1.0
    assert found[("dance_worker_busy_seconds_total", _labels(worker=ready))] > 0
    assert 0 < found[("dance_worker_busy_ratio", _labels(worker=ready))] <= 1
    assert any(name == "dance_comfyui_vram_total_bytes" and dict(labels)["worker"] == ready and value > 0
               for (name, labels), value in found.items())
    assert found[("dance_queue_messages", _labels(priority="5", queue="dance"))] == 0.0


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(flower: Flower) -> Samples:
    """Every sample Flower's /metrics serves, keyed by (name, sorted labels)."""
    text = flower.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _labels(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))

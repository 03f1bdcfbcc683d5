"""Pipelining keeps the GPU busy without mixing jobs, and never hoards work while another GPU idles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
from PIL import Image

from demo.samples import make_dance_mp4
from tests.fixtures.workers import Cluster
from tests.support.jobs import SAMPLE_HEIGHT_PX, SAMPLE_WIDTH_PX, dance_request
from tests.support.processes import wait_until

COLOURS = [(220, 30, 30), (30, 200, 40), (30, 60, 220), (230, 200, 20), (200, 40, 200)]


def solid_png(path: Path, colour: tuple[int, int, int]) -> bytes:
    Image.new("RGB", (SAMPLE_WIDTH_PX, SAMPLE_HEIGHT_PX), colour).save(path, format="PNG")
    return path.read_bytes()


def corner_colour(video: Path) -> tuple[int, int, int]:
    """The bottom-right pixel of the first frame: the reference image's, away from the inset clip."""
    with av.open(str(video)) as container:
        frame = next(container.decode(video=0)).to_image().convert("RGB")
    pixel = frame.getpixel((frame.width - 4, frame.height - 4))
    assert isinstance(pixel, tuple)
    return pixel[0], pixel[1], pixel[2]


def close(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    return all(abs(x - y) <= 24 for x, y in zip(a, b, strict=True))  # h264 shifts colours a little


def test_pipelined_jobs_never_mix_inputs_or_outputs(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given one pipelining worker and five jobs whose reference images differ only in colour
    sim = comfysim(exec_s=0.4)
    cluster.start_worker("w", sim.url)
    clip = media_server.serve("/clip.mp4", make_dance_mp4(tmp_path / "clip.mp4", frames=8, width_px=64,
                                                           height_px=112).read_bytes())
    with cluster.client() as client:
        handles = []
        for index, colour in enumerate(COLOURS):
            image = media_server.serve(f"/ref-{index}.png", solid_png(tmp_path / f"ref-{index}.png", colour))
            request = {"reference_image": image, "dance_video": clip, "prompt": f"job {index}",
                       "width": SAMPLE_WIDTH_PX, "height": SAMPLE_HEIGHT_PX, "steps": 2}
            handles.append(client.submit(request, job_id=f"colour-{index}"))
        results = [handle.result(timeout_s=90) for handle in handles]
    # Then every video shows its own job's reference, in its own folder
    for index, (colour, result) in enumerate(zip(COLOURS, results, strict=True)):
        video = Path(next(o for o in result["outputs"] if o["kind"] == "video")["uri"].removeprefix("file://"))
        assert video.parent.name == f"colour-{index}"
        assert close(corner_colour(video), colour), (index, corner_colour(video), colour)


def test_a_busy_worker_stages_the_next_job_in_comfyui_while_one_runs(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a worker whose ComfyUI holds the first job mid-sampler
    sim = comfysim(exec_s=0.2)
    sim.faults({"hold": True})
    cluster.start_worker("w", sim.url)
    with cluster.client() as client:
        first = client.submit(dance_request(media_server, tmp_path))
        second = client.submit(dance_request(media_server, tmp_path))
        third = client.submit(dance_request(media_server, tmp_path))
        # Then while the first runs, the second is downloaded, uploaded and queued in ComfyUI already
        wait_until(lambda: sim.state()["prompts_received"] == 2, 30, "the second prompt to be queued")
        assert sim.state()["held"]
        # and the third is not taken: one job staged ahead is enough to keep the GPU busy
        assert third.status() == "PENDING"
        sim.faults({"hold": False})
        sim.release()
        assert all(h.result(timeout_s=60)["status"] == "succeeded" for h in (first, second, third))
    # and ComfyUI ran the three prompts one after the other (the gaps are measured by `make bench`)
    assert len(sim.state()["runs"]) == 3


def test_a_busy_worker_leaves_a_new_job_to_an_idle_peer(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given worker A busy with a held job, and worker B idle and ready
    sim_a, sim_b = comfysim(exec_s=0.2), comfysim(exec_s=0.2)
    sim_a.faults({"hold": True})
    cluster.start_worker("a", sim_a.url)
    with cluster.client() as client:
        busy = client.submit(dance_request(media_server, tmp_path))
        wait_until(lambda: sim_a.state()["held"], 30, "A's job to run")
        worker_b = cluster.start_worker("b", sim_b.url)
        worker_b.wait_for_log(" ready.")
        # When one more job arrives (fewer queued jobs than idle GPUs)
        wait_until(lambda: _idle_announced(cluster), 10, "B to announce itself idle")
        job = client.submit(dance_request(media_server, tmp_path))
        # Then the idle GPU runs it, not the busy one's queue
        result = job.result(timeout_s=60)
        assert result["worker"]["hostname"].startswith("b@")
        assert sim_a.state()["prompts_received"] == 1
        sim_a.release()
        assert busy.result(timeout_s=60)["status"] == "succeeded"


def _idle_announced(cluster: Cluster) -> bool:
    import redis

    return int(redis.Redis.from_url(cluster.broker_url).zcard("dance:idle:dance")) >= 1

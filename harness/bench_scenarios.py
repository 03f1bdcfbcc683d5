"""The benchmark scenarios. Each starts its own loopback cluster and returns named figures."""

from __future__ import annotations

import datetime
import re
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from harness.bench_cluster import (
    HEIGHT_PX,
    WIDTH_PX,
    BenchCluster,
    ThrottledMedia,
    bench_media,
    busy_fraction,
    idle_gaps_s,
    median,
    percentile,
)
from harness.processes import wait_until
from harness.seaweed import start_seaweed
from worker.comfy_http import ComfyHttp
from worker.comfy_ws import EventSocket
from worker.prompt_run import PromptRun
from worker.settings import DEFAULT_WORKFLOW_PATH
from worker.workflow import load_workflow

Figures = dict[str, Any]


def request_for(media: ThrottledMedia, **extra: Any) -> dict[str, Any]:
    return {"reference_image": media.url("/character.png"), "dance_video": media.url("/dance.mp4"),
            "prompt": "bench", "width": WIDTH_PX, "height": HEIGHT_PX, "steps": 2, **extra}


def run_backlog(cluster: BenchCluster, media: ThrottledMedia, jobs: int) -> list[dict[str, Any]]:
    with cluster.client() as client:
        handles = [client.submit(request_for(media, seed=n)) for n in range(jobs)]
        return [handle.result(timeout_s=600) for handle in handles]


def busy(root: Path, exec_s: float, download_s: float, upload_s: float, jobs: int, depth: int) -> Figures:
    """GPU busy fraction and idle gaps under a backlog, for one worker with the given pipeline depth."""
    files = bench_media(root)
    # Two inputs, fetched one after the other, take download_s together.
    media = ThrottledMedia(files, bytes_per_s=2 * len(files["/character.png"]) / download_s)
    cluster = BenchCluster(root, gpus=1, exec_s=exec_s, depth=depth).start()
    output_bytes = 1 << 20
    cluster.faults({"pad_output_bytes": output_bytes, "view_bytes_per_s": output_bytes / upload_s})
    try:
        run_backlog(cluster, media, jobs)
        runs = cluster.runs()[0]
    finally:
        cluster.stop()
        media.close()
    gaps = idle_gaps_s(runs)
    return {"busy_fraction": round(busy_fraction(runs), 3), "idle_gap_median_ms": round(median(gaps) * 1000, 1),
            "idle_gap_max_ms": round(max(gaps) * 1000, 1) if gaps else None, "jobs": jobs}


#: Celery's log line for a task the worker reserved, with its timestamp (local time, milliseconds).
_RECEIVED = re.compile(
    r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] Task dance\.generate\[(\S+)\] received"
)


def ready_latency(root: Path, trials: int) -> Figures:
    """From the first 200 of /system_stats to the first task reserved, for a worker that waited."""
    latencies = []
    for trial in range(trials):
        cluster = BenchCluster(root / f"ready{trial}", gpus=1, exec_s=0.0)
        latencies.append(_one_ready_trial(cluster))
    return {"ready_to_reserved_median_ms": round(median(latencies) * 1000, 1),
            "ready_to_reserved_max_ms": round(max(latencies) * 1000, 1), "trials": trials}


def _one_ready_trial(cluster: BenchCluster) -> float:
    from harness.local import redis_service, simulator_service, wait_for_redis
    from harness.processes import free_port

    logs, port, sim_port = cluster.root / "logs", free_port(), free_port()
    cluster.processes.append(redis_service("redis", port, cluster.root / "redis", logs).start())
    wait_for_redis(port, 15)
    cluster.broker = f"redis://127.0.0.1:{port}/0"
    cluster.sims.append(f"http://127.0.0.1:{sim_port}")
    worker = cluster.start_worker(0)
    media = ThrottledMedia(bench_media(cluster.root), bytes_per_s=None)
    try:
        with cluster.client() as client:
            handle = client.submit(request_for(media))
            worker.wait_for_log("detached until ComfyUI is ready", timeout_s=60)
            cluster.processes.append(simulator_service("sim0", sim_port, cluster.root / "comfyui0", logs, 0.0).start())
            first_200 = _first_200(cluster.sims[0])
            handle.result(timeout_s=60)
        stamp = next(m.group(1) for m in _RECEIVED.finditer(worker.log()) if m.group(2) == handle.id)
        received = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return received - first_200
    finally:
        cluster.stop()
        media.close()


def _first_200(url: str) -> float:
    """Poll /system_stats every 2 ms; the wall-clock time of its first 200."""
    while True:
        try:
            with urllib.request.urlopen(f"{url}/system_stats", timeout=1) as response:
                if response.status == 200:
                    return time.time()
        except OSError:
            time.sleep(0.002)


def overhead(root: Path, jobs: int) -> Figures:
    """End-to-end time of a job minus a direct ComfyUI round trip, zero execution, tiny media."""
    media = ThrottledMedia(bench_media(root, tiny=True), bytes_per_s=None)
    cluster = BenchCluster(root, gpus=1, exec_s=0.0).start()
    files = {name: root / f"direct{name.replace('/', '-')}" for name in ("/character.png", "/dance.mp4")}
    for name, path in files.items():
        path.write_bytes(urllib.request.urlopen(media.url(name)).read())
    extra: list[float] = []
    try:
        with cluster.client() as client:
            for n in range(jobs):
                direct_s = _direct_round_trip(cluster.sims[0], files, n)
                job_id = uuid.uuid4().hex
                with _SuccessWatch(client, job_id) as watch:
                    began = time.time()
                    client.submit(request_for(media, seed=n), job_id=job_id)
                    done = watch.wait(timeout_s=60)
                extra.append(done - began - direct_s)
    finally:
        cluster.stop()
        media.close()
    return {"overhead_p50_ms": round(percentile(extra, 0.5) * 1000, 1),
            "overhead_p99_ms": round(percentile(extra, 0.99) * 1000, 1), "jobs": jobs}


class _SuccessWatch:
    """The wall-clock time a job's SUCCESS lands, heard on the result backend's channel for the job (Celery's
    Redis backend publishes every state it stores). It replaced a GET of the result key every millisecond,
    which took about a quarter of a core from the two this cluster shares, during the job and not during the
    direct round trip it is compared with."""

    def __init__(self, client: Any, job_id: str) -> None:
        self.pubsub = client.app.backend.client.pubsub()
        self.pubsub.subscribe(client.app.backend.get_key_for_task(job_id))
        self.job_id = job_id

    def wait(self, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if message is not None and message["type"] == "message" and b'"SUCCESS"' in message["data"]:
                return time.time()
        raise TimeoutError(f"job {self.job_id} did not succeed within {timeout_s:g}s")

    def __enter__(self) -> _SuccessWatch:
        # Subscribed (confirmed) before the job is submitted, so its SUCCESS cannot go unheard.
        confirmation = self.pubsub.get_message(timeout=10)
        if confirmation is None or confirmation["type"] != "subscribe":
            raise RuntimeError(f"the result channel of job {self.job_id} was not subscribed: {confirmation}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.pubsub.close()


def _direct_round_trip(sim: str, files: dict[str, Path], n: int) -> float:
    """What a client talking to ComfyUI directly does: upload, prompt, wait on the socket, fetch."""
    began = time.time()
    http = ComfyHttp(sim, timeout_s=30)
    image = http.upload_image(files["/character.png"], f"direct-{n}.png")
    video = http.upload_image(files["/dance.mp4"], f"direct-{n}.mp4")
    graph = load_workflow(DEFAULT_WORKFLOW_PATH).bind({
        "reference_image_filename": image, "dance_video_filename": video, "prompt": "bench", "negative_prompt": "",
        "width": WIDTH_PX, "height": HEIGHT_PX, "steps": 2, "cfg": 1.0, "seed": n,
        "output_prefix": f"direct/{n}/dance", "job_id": f"direct-{n}"})
    sock = EventSocket(sim, f"direct-{n}")
    sock.connect()
    try:
        submitted = http.queue_prompt(graph, f"direct-{n}", {})
        outcome = PromptRun(http, sock, submitted.prompt_id, 60.0, threading.Event(),
                            lambda _: None).wait()
    finally:
        sock.close()
    for item in outcome.outputs:
        with http.view(item) as body:
            while body.read(1 << 20):
                pass
    http.close()
    return time.time() - began


def conservation(root: Path, rounds: int) -> Figures:
    """With fewer queued jobs than idle GPUs, how long a job waits to start: one job starts, then two more
    arrive while three GPUs are idle; none may wait behind the busy one."""
    media = ThrottledMedia(bench_media(root), bytes_per_s=None)
    cluster = BenchCluster(root, gpus=4, exec_s=2.0).start()
    waits = []
    try:
        with cluster.client() as client:
            for n in range(rounds):
                first = client.submit(request_for(media, seed=1000 + n))
                time.sleep(0.3)
                sent = time.time()
                later = [client.submit(request_for(media, seed=2000 + 2 * n + k)) for k in range(2)]
                results = [handle.result(timeout_s=120) for handle in (first, *later)]
                starts = _starts_by_prompt(cluster)
                waits += [starts[result["comfyui"]["prompt_id"]] - sent for result in results[1:]]
    finally:
        cluster.stop()
        media.close()
    return {"wait_to_start_max_ms": round(max(waits) * 1000, 1),
            "wait_to_start_median_ms": round(median(waits) * 1000, 1), "jobs": len(waits)}


def _starts_by_prompt(cluster: BenchCluster) -> dict[str, float]:
    return {run.prompt_id: run.started_at for per_gpu in cluster.prompt_runs() for run in per_gpu}


def scaling(root: Path, gpus: int, jobs_per_gpu: int, exec_s: float) -> Figures:
    """Jobs per second through ``gpus`` simulated GPUs under a backlog (sleep-based execution, tiny media:
    on two cores the simulators' own decoding and encoding would otherwise compete for the CPU)."""
    media = ThrottledMedia(bench_media(root, tiny=True), bytes_per_s=None)
    cluster = BenchCluster(root, gpus=gpus, exec_s=exec_s).start()
    try:
        run_backlog(cluster, media, gpus * jobs_per_gpu)
        per_gpu = cluster.runs()
    finally:
        cluster.stop()
        media.close()
    return {"gpus": gpus, "jobs": sum(map(len, per_gpu)), "jobs_per_s": round(steady_jobs_per_s(per_gpu), 3)}


def steady_jobs_per_s(per_gpu: list[list[tuple[float, float]]]) -> float:
    """Throughput while every GPU has work: from the last GPU's first start to the first GPU's last end,
    so that the ramp-up and the uneven tail of a finite backlog do not count. A run counts by the part
    of it inside that window."""
    start = max(runs[0][0] for runs in per_gpu)
    end = min(runs[-1][1] for runs in per_gpu)
    done = sum(max(0.0, min(e, end) - max(s, start)) / (e - s) for runs in per_gpu for s, e in runs if e > s)
    return done / (end - start)


def memory(root: Path, output_bytes: int) -> Figures:
    """Peak RSS growth of the worker while it streams one huge output from /view into S3."""
    weed, s3 = start_seaweed(root / "seaweed")
    env = {k: v for k, v in s3.env.items() if k != "AWS_MAX_ATTEMPTS"}
    media = ThrottledMedia(bench_media(root), bytes_per_s=None)
    cluster = BenchCluster(root, gpus=1, exec_s=0.0,
                           env={**env, "DANCE_STORAGE_URL": f"s3://{s3.bucket}/bench"}).start()
    try:
        with cluster.client() as client:
            client.submit(request_for(media, seed=1)).result(timeout_s=120)  # warm up every code path
            cluster.faults({"pad_output_bytes": output_bytes})
            pid = cluster.workers[0].pid
            baseline = _rss_bytes(pid)
            peak = [baseline]
            handle = client.submit(request_for(media, seed=2))
            wait_until(lambda: _sample(pid, peak) and handle.status() in ("SUCCESS", "FAILURE"), 900,
                       "the 1 GB job")
            result = handle.result(timeout_s=10)
    finally:
        cluster.stop()
        media.close()
        weed.stop()
    video = next(item for item in result["outputs"] if item["kind"] == "video")
    return {"output_bytes": video["bytes"], "rss_growth_mb": round((max(peak) - baseline) / 2**20, 1),
            "baseline_rss_mb": round(baseline / 2**20, 1)}


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _sample(pid: int, peak: list[int]) -> bool:
    peak.append(_rss_bytes(pid))
    return True

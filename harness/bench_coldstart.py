"""The cold-start benchmark: what the first job after ready pays while ComfyUI loads its models.

One fresh simulator per run, started with ``--model-load-s`` (the first use of each model file costs that
long: simulator/model_loads.py), and one worker, once with the warm-up off and once with it on. Each run
submits one job as soon as the worker is ready, then ``warm_jobs`` more, one at a time, that differ only in
their seed. The GPU time of each job is read off the simulator's own records (``sim.state()["runs"]``), so
worker overhead does not blur it. The figure that counts is the first job's GPU time over the median warm
job's: about ``(exec_s + files * load_s) / exec_s`` without a warm-up, 1 with one.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.bench_cluster import ThrottledMedia, bench_media
from harness.local import redis_service, wait_for_port, wait_for_redis, worker_service
from harness.processes import ManagedProcess, free_port, wait_until
from producer.client import DanceClient
from producer.settings import ProducerSettings

#: Simulated seconds each model file's first use costs (the dance workflow names eight files).
MODEL_LOAD_S = 3.0
#: Simulated GPU seconds of the sampler per job.
EXEC_S = 2.0
#: Longest any one wait of the benchmark may take, in seconds.
WAIT_S = 300.0
#: Frame size of the benchmark's jobs, in pixels.
WIDTH_PX, HEIGHT_PX = 128, 224
#: The worker's log line with its whole start-up timeline (worker/startup.py).
_TIMELINE = re.compile(r"start-up timeline: (.*)")
_MILESTONE = re.compile(r"(\w+) ([\d.]+)s")

Figures = dict[str, Any]


@dataclass
class ColdCluster:
    """Redis, one simulator that loads models slowly, one worker, a media server."""

    root: Path
    load_s: float
    warmup: str
    exec_s: float = EXEC_S
    broker: str = ""
    sim_url: str = ""
    processes: list[ManagedProcess] = field(default_factory=list)
    worker: ManagedProcess | None = None

    def start(self) -> ColdCluster:
        logs, port, sim_port = self.root / "logs", free_port(), free_port()
        self.processes.append(redis_service("redis", port, self.root / "redis", logs).start())
        wait_for_redis(port, 15)
        self.broker = f"redis://127.0.0.1:{port}/0"
        comfyui = self.root / "comfyui"
        argv = [sys.executable, "-m", "simulator", "--port", str(sim_port), "--data-dir", str(comfyui),
                "--exec-s", str(self.exec_s), "--model-load-s", str(self.load_s)]
        self.processes.append(ManagedProcess("sim", argv, logs / "sim.log").start())
        wait_for_port(sim_port, 30, "the simulator")
        self.sim_url = f"http://127.0.0.1:{sim_port}"
        env = {
            "CELERY_BROKER_URL": self.broker, "CELERY_RESULT_BACKEND": self.broker, "COMFYUI_URL": self.sim_url,
            "DANCE_STORAGE_URL": (self.root / "storage").as_uri(), "COMFYUI_INPUT_DIR": str(comfyui / "input"),
            "COMFYUI_OUTPUT_DIR": str(comfyui / "output"), "DANCE_WORK_DIR": str(self.root / "scratch"),
            "DANCE_FETCH_ALLOW_HOSTS": "127.0.0.1", "DANCE_WARMUP": self.warmup,
        }
        self.worker = worker_service("gpu0", env, logs).start()
        self.processes.append(self.worker)
        wait_until(lambda: " ready." in self.log(), WAIT_S, "the worker to be ready")
        return self

    def log(self) -> str:
        return self.worker.log() if self.worker is not None else ""

    def client(self) -> DanceClient:
        return DanceClient(ProducerSettings(broker_url=self.broker, result_backend=self.broker,
                                            storage_url=(self.root / "storage").as_uri(), wait_timeout_s=WAIT_S))

    def gpu_seconds(self) -> dict[str, float]:
        """GPU seconds of each prompt the simulator ran, by the job id its prompt carried."""
        with urllib.request.urlopen(f"{self.sim_url}/__sim__/state", timeout=10) as response:
            state = json.loads(response.read())
        return {str(job_id): float(end) - float(start) for _prompt, start, end, job_id, _worker in state["runs"]}

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def timeline(log: str) -> dict[str, float]:
    """The worker's start-up milestones, in seconds since boot, from its timeline log line."""
    match = _TIMELINE.search(log)
    return {name: float(after) for name, after in _MILESTONE.findall(match.group(1))} if match else {}


def one_run(root: Path, load_s: float, warmup: str, warm_jobs: int) -> Figures:
    """The first job after ready and ``warm_jobs`` warm ones, on a fresh simulator and worker."""
    files = bench_media(root, tiny=True)
    media = ThrottledMedia(files, bytes_per_s=None)
    cluster = ColdCluster(root, load_s, warmup)
    try:
        cluster.start()
        job_ids = []
        with cluster.client() as client:
            for seed in range(warm_jobs + 1):
                request = {"reference_image": media.url("/character.png"), "dance_video": media.url("/dance.mp4"),
                           "prompt": "bench", "width": WIDTH_PX, "height": HEIGHT_PX, "steps": 2, "seed": seed}
                job_ids.append(str(client.submit(request).result(timeout_s=WAIT_S)["job_id"]))
        gpu = cluster.gpu_seconds()
        marks = timeline(cluster.log())
    finally:
        cluster.stop()
        media.close()
    first, warm = gpu[job_ids[0]], statistics.median(gpu[job_id] for job_id in job_ids[1:])
    warmups = [seconds for job_id, seconds in gpu.items() if job_id.startswith("warmup")]
    return {
        "first_job_gpu_s": round(first, 3), "warm_job_gpu_s": round(warm, 3),
        "first_over_warm": round(first / warm, 3), "warmup_gpu_s": round(sum(warmups), 3) if warmups else None,
        "ready_after_s": marks.get("ready"), "first_job_after_s": marks.get("first_job"),
    }


def cold_start(root: Path, load_s: float = MODEL_LOAD_S, warm_jobs: int = 3) -> Figures:
    """The first job over a warm one, without and with the warm-up."""
    cold = one_run(root / "warmup-off", load_s, "off", warm_jobs)
    warmed = one_run(root / "warmup-on", load_s, "on", warm_jobs)
    return {
        "model_load_s": load_s, "exec_s": EXEC_S, "warm_jobs": warm_jobs,
        **{f"off_{name}": value for name, value in cold.items()},
        **{f"on_{name}": value for name, value in warmed.items()},
    }

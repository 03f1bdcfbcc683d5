"""A loopback cluster for the benchmarks: Redis, N simulated GPUs each with its worker, a throttled
media server for inputs, and the measurements read off the simulators (when each prompt ran)."""

from __future__ import annotations

import io
import itertools
import json
import statistics
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from demo.samples import make_dance_mp4
from harness.local import redis_service, simulator_service, wait_for_port, wait_for_redis, worker_service
from harness.processes import ManagedProcess, free_port, wait_until
from producer.client import DanceClient
from producer.settings import ProducerSettings
from simulator.nodes.vhs import pad_free_box


@dataclass(frozen=True)
class PromptRunRecord:
    """One prompt a simulated GPU ran: ``sim.state()["runs"]`` entry, times in epoch seconds."""

    prompt_id: str
    started_at: float
    ended_at: float
    #: The ``dance_job_id`` / ``dance_worker`` of the prompt's extra_data; None for a prompt of no worker.
    job_id: str | None
    worker: str | None


#: Inputs the benchmarks send: a character image and a clip, both this size so throttling shapes time.
INPUT_BYTES = 96 * 1024
#: Pause granularity of the throttled media server, in seconds.
PACE_TICK_S = 0.02
#: Size of the benchmark's frames, in pixels (small: the simulator encodes real video).
WIDTH_PX, HEIGHT_PX = 128, 224


class ThrottledMedia:
    """A threaded HTTP server on loopback that serves files at a fixed rate (None: as fast as it can)."""

    def __init__(self, files: dict[str, bytes], bytes_per_s: float | None) -> None:
        files_, rate = files, bytes_per_s

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                body = files_.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                step = len(body) if rate is None else max(1, int(rate * PACE_TICK_S))
                for start in range(0, len(body), step):
                    self.wfile.write(body[start:start + step])
                    if rate is not None:
                        time.sleep(min(step, len(body) - start) / rate)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def bench_media(folder: Path, tiny: bool = False) -> dict[str, bytes]:
    """A noise PNG and a padded MP4 of about INPUT_BYTES each (noise does not compress), or with
    ``tiny`` a few-kilobyte pair."""
    folder.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    if tiny:
        Image.new("RGB", (WIDTH_PX, HEIGHT_PX), (200, 60, 80)).save(png, format="PNG")
        clip = make_dance_mp4(folder / "clip.mp4", frames=4, width_px=64, height_px=112)
        return {"/character.png": png.getvalue(), "/dance.mp4": clip.read_bytes()}
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 255, size=(HEIGHT_PX, WIDTH_PX, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(png, format="PNG")
    clip = make_dance_mp4(folder / "clip.mp4", frames=8, width_px=64, height_px=112)
    pad_free_box(str(clip), max(0, INPUT_BYTES - clip.stat().st_size))
    return {"/character.png": png.getvalue(), "/dance.mp4": clip.read_bytes()}


@dataclass
class BenchCluster:
    root: Path
    gpus: int
    exec_s: float
    depth: int = 1
    env: dict[str, str] = field(default_factory=dict)
    broker: str = ""
    sims: list[str] = field(default_factory=list)
    processes: list[ManagedProcess] = field(default_factory=list)
    workers: list[ManagedProcess] = field(default_factory=list)

    def start(self) -> BenchCluster:
        logs, port = self.root / "logs", free_port()
        self.processes.append(redis_service("redis", port, self.root / "redis", logs).start())
        wait_for_redis(port, 15)
        self.broker = f"redis://127.0.0.1:{port}/0"
        for index in range(self.gpus):
            sim_port = free_port()
            self.processes.append(simulator_service(f"sim{index}", sim_port, self.root / f"comfyui{index}", logs,
                                                    self.exec_s).start())
            self.sims.append(f"http://127.0.0.1:{sim_port}")
        for index, sim in enumerate(self.sims):
            wait_for_port(int(sim.rsplit(":", 1)[1]), 30, f"simulator {index}")
            self.start_worker(index)
        wait_until(self.all_ready, 60, "every worker to be ready")
        return self

    def start_worker(self, index: int) -> ManagedProcess:
        env = {
            "CELERY_BROKER_URL": self.broker, "CELERY_RESULT_BACKEND": self.broker,
            "COMFYUI_URL": self.sims[index], "DANCE_STORAGE_URL": (self.root / "storage").as_uri(),
            "COMFYUI_INPUT_DIR": str(self.root / f"comfyui{index}" / "input"),
            "COMFYUI_OUTPUT_DIR": str(self.root / f"comfyui{index}" / "output"),
            "DANCE_WORK_DIR": str(self.root / f"scratch{index}"), "DANCE_FETCH_ALLOW_HOSTS": "127.0.0.1",
            "DANCE_PIPELINE_DEPTH": str(self.depth), **self.env,
        }
        worker = worker_service(f"gpu{index}", env, self.root / "logs").start()
        self.workers.append(worker)
        self.processes.append(worker)
        return worker

    def all_ready(self) -> bool:
        return all(" ready." in worker.log() for worker in self.workers)

    def client(self) -> DanceClient:
        return DanceClient(ProducerSettings(broker_url=self.broker, result_backend=self.broker,
                                            storage_url=(self.root / "storage").as_uri(), wait_timeout_s=600))

    def faults(self, spec: dict[str, Any]) -> None:
        for sim in self.sims:
            request = urllib.request.Request(f"{sim}/__sim__/faults", data=json.dumps(spec).encode(), method="POST",
                                             headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=10).close()

    def prompt_runs(self) -> list[list[PromptRunRecord]]:
        """Per simulated GPU, every prompt it ran, however the run ended (simulator/faults.py SimState.runs)."""
        out = []
        for sim in self.sims:
            with urllib.request.urlopen(f"{sim}/__sim__/state", timeout=10) as response:
                state = json.loads(response.read())
            out.append([PromptRunRecord(str(prompt_id), float(start), float(end), job_id, worker)
                        for prompt_id, start, end, job_id, worker in state["runs"]])
        return out

    def runs(self) -> list[list[tuple[float, float]]]:
        """Per simulated GPU, the (start, end) of every prompt it ran, in order."""
        return [sorted((run.started_at, run.ended_at) for run in per_gpu) for per_gpu in self.prompt_runs()]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def busy_fraction(runs: list[tuple[float, float]]) -> float:
    """Share of the time from the first start to the last end during which the GPU ran a prompt."""
    if not runs:
        return 0.0
    span = runs[-1][1] - runs[0][0]
    return sum(end - start for start, end in runs) / span if span > 0 else 0.0


def idle_gaps_s(runs: list[tuple[float, float]]) -> list[float]:
    return [max(0.0, nxt[0] - prev[1]) for prev, nxt in itertools.pairwise(runs)]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")

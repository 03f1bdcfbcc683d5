"""Flower as an operator sees it: a real Flower process, pages rendered by headless Chromium.

Chromium comes from the distribution (``make test`` installs Debian's ``chromium`` when it is missing).
A missing browser fails the test that needs it, loudly: a skipped UI test proves nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.fixtures.workers import Cluster
from tests.support.processes import ManagedProcess, free_port, port_accepts, wait_until

#: Where screenshots are kept for people to look at (gitignored).
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
#: Flags that keep a headless Chromium on this machine: no sandbox (root in CI), no GPU, no network
#: of its own (updates, sync, QUIC), a fresh profile per page.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1400")
#: How long one page may take to render, in seconds.
RENDER_TIMEOUT_S = 60.0
#: Flower's login in tests.
FLOWER_USER, FLOWER_PASSWORD = "ops", "flower-test-password"
HTTP_OK = 200


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("chromium is not installed; `make test` installs Debian's chromium (apt-get install chromium)")


def render(url: str, screenshot: Path | None = None) -> str:
    """The DOM of ``url`` after its scripts ran; also a PNG of the page if ``screenshot`` is given."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        argv = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom"]
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            argv.append(f"--screenshot={screenshot}")
        done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=RENDER_TIMEOUT_S, check=False)
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"chromium could not render {url} (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


@dataclass
class Flower:
    port: int
    process: ManagedProcess

    def url(self, path: str, with_login: bool = False) -> str:
        login = f"{FLOWER_USER}:{FLOWER_PASSWORD}@" if with_login else ""
        return f"http://{login}127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url(path), auth=(FLOWER_USER, FLOWER_PASSWORD), timeout=10)

    def task(self, task_id: str) -> dict[str, Any]:
        """Flower's record of a task; empty until Flower has received an event of it (a 404 until then)."""
        response = self.get(f"/api/task/info/{task_id}")
        return dict(response.json()) if response.status_code == HTTP_OK else {}

    def hears(self, worker_prefix: str) -> bool:
        """Whether Flower's event receiver has heard a live worker whose name starts with ``worker_prefix``
        (a heartbeat): from then on it sees every task event, ``task-received`` with the arguments included."""
        response = self.get("/api/workers?status=1")
        alive = dict(response.json()) if response.status_code == HTTP_OK else {}
        return any(name.startswith(worker_prefix) and up for name, up in alive.items())

    def workers(self) -> dict[str, Any]:
        """Flower's view of the workers, refreshed by a broadcast inspect (a worker may miss one)."""
        response = self.get("/api/workers?refresh=1")
        return dict(response.json()) if response.status_code == HTTP_OK else {}


def start_flower(cluster: Cluster, comfyui_url: str) -> Flower:
    """``dance flower``: ``celery -A worker.telemetry.flowerapp flower`` with this project's config file."""
    port = free_port()
    args = [f"--port={port}", "--address=127.0.0.1", f"--basic-auth={FLOWER_USER}:{FLOWER_PASSWORD}"]
    return Flower(port, launch_flower(cluster, args, port, cluster.env(comfyui_url)))


def launch_flower(cluster: Cluster, args: list[str], port: int, env: dict[str, str]) -> ManagedProcess:
    """Run ``dance flower ARGS`` (stopped with the cluster's workers) and wait until it listens on ``port``."""
    argv = [sys.executable, "-m", "producer.cli", "flower", *args]
    process = ManagedProcess("flower", argv, cluster.root / f"flower-{port}.log", env=env).start()
    cluster.workers.append(process)

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"flower exited with {process.poll()}:\n{process.log()[-4000:]}")
        return port_accepts(port)

    wait_until(up, 30, "Flower to listen")
    return process

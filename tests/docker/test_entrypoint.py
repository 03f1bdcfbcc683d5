"""docker/entrypoint.sh, run here as the container runs it: the simulator and a real worker against real Redis.

tini forwards a stop signal to the entrypoint alone (not to its process group), so the tests signal the
entrypoint's pid, never the group.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from producer import keys
from tests.fixtures.media_server import MediaServer
from tests.fixtures.workers import Cluster
from tests.support.jobs import dance_request, queued_messages, unacked_messages
from tests.support.processes import ManagedProcess, free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO_ROOT / "docker" / "entrypoint.sh"
#: How long the pair may take to start and report ready, in seconds.
READY_TIMEOUT_S = 60.0
#: How long a stopping pair may take to exit, in seconds.
EXIT_TIMEOUT_S = 30.0
_STARTED = re.compile(r"entrypoint: started (\S+) \(pid (\d+)\)")

StartPair = Callable[..., ManagedProcess]


def started_pids(process: ManagedProcess) -> dict[str, int]:
    """Pids of the children the entrypoint logged: {'simulator': …, 'worker': …}."""
    return {name: int(pid) for name, pid in _STARTED.findall(process.log())}


def gone(pid: int) -> bool:
    """The process no longer runs (it may linger as a zombie until its parent reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


@pytest.fixture
def start_pair(cluster: Cluster, tmp_path: Path) -> Iterator[StartPair]:
    pairs: list[ManagedProcess] = []
    # The image installs the `dance` console script; a source checkout may not, so a shim stands in.
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "dance").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m producer.cli "$@"\n')
    (shims / "dance").chmod(0o755)

    def start(**extra: str) -> ManagedProcess:
        node = f"pair-{uuid.uuid4().hex[:8]}@test"
        settings = {
            "COMFYUI_BACKEND": "simulator",
            "COMFYUI_INPUT_DIR": str(tmp_path / "comfy" / "input"),
            "COMFYUI_OUTPUT_DIR": str(tmp_path / "comfy" / "output"),
            "COMFYSIM_EXEC_S": "0.2",
            "DANCE_WORKER_NAME": node,
            "DANCE_QUEUES": "dance",
            "DANCE_SOFT_SHUTDOWN_S": "20",
            "DANCE_WORK_DIR": str(tmp_path / "scratch"),
            "PATH": os.pathsep.join([str(shims), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "PYTHONPATH": str(REPO_ROOT),
        }
        env = cluster.env(f"http://127.0.0.1:{free_port()}", **{**settings, **extra})
        process = ManagedProcess("entrypoint", ["bash", str(ENTRYPOINT)], tmp_path / "entrypoint.log",
                                 env=env, cwd=REPO_ROOT).start()
        pairs.append(process)
        return process

    yield start
    for process in pairs:
        for pid in started_pids(process).values():
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        process.kill()


def node_of(process: ManagedProcess) -> str:
    return str(process.env["DANCE_WORKER_NAME"])


def consuming(broker_url: str, node: str) -> bool:
    raw = redis.Redis.from_url(broker_url).get(keys.worker_liveness(node))
    return raw is not None and b'"consuming": true' in raw


def dance_check(process: ManagedProcess) -> int:
    env = {**os.environ, **process.env}
    command = [sys.executable, "-m", "producer.cli", "check"]
    return subprocess.run(command, env=env, capture_output=True, timeout=30, check=False).returncode


def wait_ready(process: ManagedProcess) -> None:
    """Until the worker's gate has attached its queues (the liveness record follows within its interval)."""
    process.wait_for_log("attached", timeout_s=READY_TIMEOUT_S)


def wait_healthy(cluster: Cluster, process: ManagedProcess) -> None:
    wait_until(lambda: consuming(cluster.broker_url, node_of(process)), READY_TIMEOUT_S,
               "the liveness record to say the worker consumes")


def test_the_container_reports_healthy_once_its_worker_consumes_behind_comfyui(
    cluster: Cluster, start_pair: StartPair
) -> None:
    # Given the entrypoint started with the simulator as ComfyUI
    pair = start_pair()
    # When the worker's gate has found ComfyUI ready
    wait_healthy(cluster, pair)
    # Then the HEALTHCHECK command passes, and both children were started
    assert dance_check(pair) == 0
    assert set(started_pids(pair)) == {"simulator", "worker"}


def test_when_comfyui_dies_the_worker_is_stopped_and_the_container_exits_non_zero(
    cluster: Cluster, start_pair: StartPair
) -> None:
    # Given a running, ready pair
    pair = start_pair()
    wait_ready(pair)
    pids = started_pids(pair)
    # When ComfyUI dies
    os.kill(pids["simulator"], signal.SIGKILL)
    # Then the entrypoint stops the worker and exits with a failure, so the restart policy restarts both
    assert pair.wait(timeout_s=EXIT_TIMEOUT_S) != 0
    assert gone(pids["worker"])
    assert "simulator exited" in pair.log()


def test_when_the_worker_dies_comfyui_is_stopped_and_the_container_exits(
    cluster: Cluster, start_pair: StartPair
) -> None:
    # Given a running, ready pair
    pair = start_pair()
    wait_ready(pair)
    pids = started_pids(pair)
    # When the worker is killed
    os.kill(pids["worker"], signal.SIGKILL)
    # Then ComfyUI is stopped too and the exit status is the worker's
    assert pair.wait(timeout_s=EXIT_TIMEOUT_S) == 128 + signal.SIGKILL
    assert gone(pids["simulator"])


def test_sigterm_stops_the_worker_first_then_comfyui_and_exits_zero(
    cluster: Cluster, start_pair: StartPair
) -> None:
    # Given an idle, ready pair
    pair = start_pair()
    wait_ready(pair)
    pids = started_pids(pair)
    # When the stop signal reaches the entrypoint (as tini forwards `docker stop`'s SIGTERM)
    os.kill(pair.pid, signal.SIGTERM)
    # Then the worker drains and leaves, ComfyUI stops after it, and the container exits 0
    assert pair.wait(timeout_s=EXIT_TIMEOUT_S) == 0
    log = pair.log()
    assert log.index("stopping the worker") < log.index("worker exited (0)") < log.index("simulator stopped")
    assert gone(pids["worker"]) and gone(pids["simulator"])
    assert not consuming(cluster.broker_url, node_of(pair))


def test_a_job_still_running_when_the_soft_window_ends_goes_back_to_the_queue(
    cluster: Cluster, start_pair: StartPair, media_server: MediaServer, tmp_path: Path
) -> None:
    # Given a pair whose job takes far longer than its two-second soft shutdown window
    pair = start_pair(COMFYSIM_EXEC_S="120", DANCE_SOFT_SHUTDOWN_S="2")
    wait_ready(pair)
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path))
        wait_until(lambda: handle.status() in {"STARTED", "PROGRESS"}, 60, "the job to start")
        # When the container is stopped
        os.kill(pair.pid, signal.SIGTERM)
        # Then the worker is cold-stopped after the window and the job waits in the queue for another worker
        assert pair.wait(timeout_s=EXIT_TIMEOUT_S) == 0, pair.log()[-3000:]
        assert "soft shutdown window over" in pair.log()
        assert queued_messages(cluster.broker_url) == 1
        assert unacked_messages(cluster.broker_url) == 0
        assert handle.status() != "FAILURE"


@pytest.mark.parametrize(
    ("setting", "value"),
    [("COMFYUI_URL", "http://comfyui.invalid:8188"), ("COMFYUI_BACKEND", "automatic1111")],
)
def test_a_misconfigured_container_exits_at_once_without_starting_anything(
    start_pair: StartPair, setting: str, value: str
) -> None:
    # Given a ComfyUI that is not on this container's loopback, or an unknown backend
    pair = start_pair(**{setting: value})
    # When the entrypoint starts, then it refuses with EX_USAGE and names the setting
    assert pair.wait(timeout_s=EXIT_TIMEOUT_S) == 64
    assert setting in pair.log()
    assert started_pids(pair) == {}

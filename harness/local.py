"""The processes of a local cluster on loopback (Redis, simulators, workers, the gateway) for the demo, the
chaos run and the benchmarks, each logging to ``<log_dir>/<name>.log``."""

from __future__ import annotations

import shutil
import sys
import urllib.request
from pathlib import Path

import redis

from harness.processes import ManagedProcess, port_accepts, wait_until


def wait_for_port(port: int, timeout_s: float, what: str) -> None:
    wait_until(lambda: port_accepts(port), timeout_s, f"{what} to listen on port {port}")


def answers_ping(client: redis.Redis) -> bool:
    """Whether the server answers PING (not just accepts connections: an AOF reload answers LOADING)."""
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def wait_for_redis(port: int, timeout_s: float) -> None:
    with redis.Redis(port=port) as client:
        wait_until(lambda: answers_ping(client), timeout_s, f"redis on port {port} to answer PING")


def fresh_dir(root: Path) -> Path:
    """``root``, emptied: a run must not inherit an earlier run's Redis data, ComfyUI files or results."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


def redis_service(name: str, port: int, data_dir: Path, log_dir: Path, aof: bool = False) -> ManagedProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--dir", str(data_dir), "--appendonly", "yes" if aof else "no"]
    return ManagedProcess(name, argv, log_dir / f"{name}.log")


def simulator_service(name: str, port: int, data_dir: Path, log_dir: Path, exec_s: float,
                      start_delay_s: float = 0.0) -> ManagedProcess:
    argv = [sys.executable, "-m", "simulator", "--port", str(port), "--data-dir", str(data_dir),
            "--exec-s", str(exec_s), "--start-delay-s", str(start_delay_s)]
    return ManagedProcess(name, argv, log_dir / f"{name}.log")


def worker_service(name: str, env: dict[str, str], log_dir: Path) -> ManagedProcess:
    argv = [sys.executable, "-m", "producer.cli", "worker", "-n", f"{name}@%h"]
    return ManagedProcess(name, argv, log_dir / f"{name}.log", env={"PYTHONUNBUFFERED": "1", **env})


def gateway_service(name: str, port: int, env: dict[str, str], log_dir: Path) -> ManagedProcess:
    """``dance gateway`` on loopback; ``env`` names the broker, the storage and DANCE_GATEWAY_API_KEYS."""
    argv = [sys.executable, "-m", "producer.cli", "gateway", "--host", "127.0.0.1", "--port", str(port)]
    return ManagedProcess(name, argv, log_dir / f"{name}.log", env={"PYTHONUNBUFFERED": "1", **env})


def gateway_answers(url: str) -> bool:
    """Whether the gateway at ``url`` answers 200 on /api/v2/health (its broker is reachable, too)."""
    try:
        with urllib.request.urlopen(f"{url}/api/v2/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_for_gateway(process: ManagedProcess, url: str, timeout_s: float) -> None:
    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.poll()}; see {process.log_path}")
        return gateway_answers(url)

    wait_until(up, timeout_s, f"the gateway at {url} to answer /api/v2/health")

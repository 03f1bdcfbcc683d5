"""Processes of a local cluster on loopback (Redis, simulators, workers, Flower) for the demo, the chaos
run and the benchmarks: start, kill -9, restart, stop, each with its own log file."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

#: Poll period while waiting for a port, in seconds.
PORT_POLL_S = 0.05


def free_port(preferred: int = 0) -> int:
    """``preferred`` if it is free, else any free loopback port."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(PORT_POLL_S)
    raise SystemExit(f"{what} does not listen on port {port} after {timeout_s:.0f}s")


class Service:
    """One supervised child process; its output goes to ``<log_dir>/<name>.log`` (appended)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.child: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with self.log_path.open("ab") as log:
            self.child = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                          env={**os.environ, **self.env}, start_new_session=True)
        return self

    @property
    def alive(self) -> bool:
        return self.child is not None and self.child.poll() is None

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a power cut would."""
        self._signal(signal.SIGKILL)
        if self.child is not None:
            self.child.wait()

    def stop(self, timeout_s: float = 20.0) -> None:
        if not self.alive or self.child is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def _signal(self, sig: int) -> None:
        if self.alive and self.child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child.pid, sig)


def redis_service(name: str, port: int, data_dir: Path, log_dir: Path, aof: bool = False) -> Service:
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--dir", str(data_dir), "--appendonly", "yes" if aof else "no"]
    return Service(name, argv, {}, log_dir)


def simulator_service(name: str, port: int, data_dir: Path, log_dir: Path, exec_s: float,
                      start_delay_s: float = 0.0) -> Service:
    argv = [sys.executable, "-m", "simulator", "--port", str(port), "--data-dir", str(data_dir),
            "--exec-s", str(exec_s), "--start-delay-s", str(start_delay_s)]
    return Service(name, argv, {}, log_dir)


def worker_service(name: str, env: dict[str, str], log_dir: Path) -> Service:
    argv = [sys.executable, "-m", "producer.cli", "worker", "-n", f"{name}@%h"]
    return Service(name, argv, {"PYTHONUNBUFFERED": "1", **env}, log_dir)

"""Start, watch and stop real processes (redis-server, SeaweedFS, simulators, workers, Flower) for the
tests, the demo, the chaos run and the benchmarks.

Callers wait on events (a port accepting, a log line, a key in Redis), never on fixed sleeps.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: How long a helper waits for a started process to become reachable, in seconds.
DEFAULT_START_TIMEOUT_S = 30.0
#: Poll period while waiting on a condition, in seconds.
POLL_INTERVAL_S = 0.02


def free_port(preferred: int = 0) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now: ``preferred`` if it is free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> object:
    """Poll ``condition`` until it returns something truthy; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.1f}s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


@dataclass
class ManagedProcess:
    """A child process whose combined output goes to a log file the test can read."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        full_env = {**os.environ, **self.env}
        # A new session, so that killing the process group takes its children too.
        self.popen = subprocess.Popen(
            list(self.argv), stdout=log, stderr=subprocess.STDOUT, env=full_env,
            cwd=self.cwd, start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, needle: str, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> None:
        def seen() -> bool:
            if needle in self.log():
                return True
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log()[-4000:]}")
            return False

        wait_until(seen, timeout_s, f"{self.name} to log {needle!r}")

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def poll(self) -> int | None:
        assert self.popen is not None
        return self.popen.poll()

    def wait(self, timeout_s: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout=timeout_s)

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if the process does not exit within ``timeout_s``."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(timeout=timeout_s)
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group, as the kernel's OOM killer or `docker kill` would."""
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


@contextlib.contextmanager
def running(process: ManagedProcess) -> Iterator[ManagedProcess]:
    process.start()
    try:
        yield process
    finally:
        process.stop()

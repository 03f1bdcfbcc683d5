"""Cooperative cancellation of running jobs, keyed by task id."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

#: Why a job was asked to stop.
REVOKED = "revoked"
SHUTDOWN = "shutdown"


@dataclass
class CancelFlag:
    event: threading.Event = field(default_factory=threading.Event)
    reason: str | None = None

    def set(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()


class CancelRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flags: dict[str, CancelFlag] = {}

    @contextmanager
    def running(self, task_id: str) -> Iterator[CancelFlag]:
        flag = CancelFlag()
        with self._lock:
            self._flags[task_id] = flag
        try:
            yield flag
        finally:
            with self._lock:
                self._flags.pop(task_id, None)

    def running_ids(self) -> list[str]:
        """Ids of the jobs running on this worker now."""
        with self._lock:
            return sorted(self._flags)

    def terminate(self, revoked: set[str]) -> None:
        """Stop the revoked jobs among those running; if none of them is revoked, this terminate
        comes from a shutdown and every running job stops."""
        with self._lock:
            flags = list(self._flags.items())
        hit = [flag for task_id, flag in flags if task_id in revoked]
        if hit:
            for flag in hit:
                flag.set(REVOKED)
            return
        for _, flag in flags:
            flag.set(SHUTDOWN)

    def shutdown_all(self) -> None:
        self.terminate(revoked=set())

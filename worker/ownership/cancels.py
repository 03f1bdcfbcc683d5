"""Cooperative cancellation: a running job polls its flag, stops its own prompt and ends."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

#: Why a job was asked to stop.
REVOKED = "revoked"
SHUTDOWN = "shutdown"
#: Another run holds the job's execution lease now: this run must stop and write nothing.
FENCED = "fenced"


@dataclass
class CancelFlag:
    event: threading.Event = field(default_factory=threading.Event)
    reason: str | None = None

    def set(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()

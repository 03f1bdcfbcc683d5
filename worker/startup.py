"""The start-up timeline of one worker process: where a cold start goes.

Milestones, each reached at most once per process and timed from the worker's boot (the runtime's build):

* ``comfyui_answering``: /system_stats first answered;
* ``nodes_models_ready``: the full readiness probe first passed (every node class and model file offered);
* ``warm``: the warm-up run ended (absent when DANCE_WARMUP is off);
* ``ready``: the gate attached the task queues (worker_ready);
* ``first_job``: the worker took its first job.

Each is logged as it is reached, and the whole timeline once the first job is taken. The liveness record
(``dance check --json``), the metrics snapshot and Flower's ``dance_worker_startup_seconds`` export it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

COMFYUI_ANSWERING = "comfyui_answering"
NODES_MODELS_READY = "nodes_models_ready"
WARM = "warm"
READY = "ready"
FIRST_JOB = "first_job"
#: The milestones in the order a cold start passes them.
MILESTONES = (COMFYUI_ANSWERING, NODES_MODELS_READY, WARM, READY, FIRST_JOB)
#: Decimals kept of a milestone's seconds since boot.
ROUND_DIGITS = 3


class Timeline:
    """When each milestone was first reached, in seconds since the worker booted."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self._began = time.monotonic()
        self._lock = threading.Lock()
        self._after_s: dict[str, float] = {}

    def mark(self, milestone: str) -> bool:
        """Record ``milestone`` now unless it was already reached; True when this call recorded it."""
        if milestone not in MILESTONES:
            raise ValueError(f"unknown start-up milestone {milestone!r}")
        with self._lock:
            if milestone in self._after_s:
                return False
            self._after_s[milestone] = round(time.monotonic() - self._began, ROUND_DIGITS)
        log.info("start-up: %s after %.2fs", milestone, self._after_s[milestone])
        if milestone == FIRST_JOB:
            log.info("start-up timeline: %s", self.describe())
        return True

    def after_s(self, milestone: str) -> float | None:
        with self._lock:
            return self._after_s.get(milestone)

    def as_dict(self) -> dict[str, Any]:
        """``{"started_at": epoch, "<milestone>_s": seconds since boot or None}``, for the exported records."""
        with self._lock:
            return {"started_at": self.started_at,
                    **{f"{name}_s": self._after_s.get(name) for name in MILESTONES}}

    def describe(self) -> str:
        """``comfyui_answering 0.12s, nodes_models_ready 0.40s, warm -, ...``: one line for the log."""
        with self._lock:
            return ", ".join(
                f"{name} {self._after_s[name]:.2f}s" if name in self._after_s else f"{name} -" for name in MILESTONES
            )

"""A worker's own numbers: jobs by outcome and code, stage durations, GPU busy time; snapshots for Prometheus.

The worker keeps plain counters in memory and publishes a JSON snapshot to Redis now and then (see
:mod:`worker.telemetry.step`); Flower's /metrics turns the snapshots of every live worker into
Prometheus series (:mod:`worker.telemetry.flower`). No Prometheus client runs on the GPU worker.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

#: Upper bounds of the stage-duration histogram buckets, in seconds (a job runs seconds to an hour).
STAGE_BUCKETS_S = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
#: Histogram stages and the result timing each is read from.
STAGE_TIMINGS = {"queue_wait": "queued_s", "download": "download_s", "execute": "execute_s", "upload": "upload_s"}
#: The window over which the GPU busy fraction is computed, in seconds.
BUSY_WINDOW_S = 60.0


@dataclass
class Histogram:
    """Cumulative-on-export histogram: per-bucket counts, their sum and their number."""

    bounds_s: tuple[float, ...] = STAGE_BUCKETS_S
    counts: list[int] = field(default_factory=lambda: [0] * (len(STAGE_BUCKETS_S) + 1))
    sum_s: float = 0.0
    count: int = 0

    def observe(self, value_s: float) -> None:
        self.counts[bisect.bisect_left(self.bounds_s, value_s)] += 1
        self.sum_s += value_s
        self.count += 1

    def as_dict(self) -> dict[str, Any]:
        return {"bounds_s": list(self.bounds_s), "counts": list(self.counts), "sum_s": self.sum_s,
                "count": self.count}


class WorkerMetrics:
    """Thread-safe: the pool thread records jobs, the event loop records revokes, a thread publishes.

    GPU busy time is sampled, not inferred from jobs: a sample says whether ComfyUI was running a prompt
    (``queue_running`` of its /queue). With the worker staging the next job while one executes, "a job is
    in the pool" would overstate it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started_at = time.monotonic()
        self.jobs: Counter[tuple[str, str]] = Counter()
        self.stages = {stage: Histogram() for stage in STAGE_TIMINGS}
        self.running: dict[str, float] = {}
        self.gpu_busy_s = 0.0
        #: (sample time, seconds it covers, busy) of recent samples, monotonic seconds.
        self._samples: deque[tuple[float, float, bool]] = deque()
        self._last_sample_at: float | None = None
        #: Set when a job ended, so the snapshot is published at once rather than at the next tick.
        self.changed = threading.Event()

    def job_started(self, job_id: str) -> None:
        with self._lock:
            self.running[job_id] = time.monotonic()

    def job_finished(self, job_id: str) -> None:
        with self._lock:
            self.running.pop(job_id, None)

    def job_ended(self, outcome: str, code: str | None, timings: dict[str, Any] | None) -> None:
        with self._lock:
            self.jobs[(outcome, code or "")] += 1
            for stage, name in STAGE_TIMINGS.items():
                value = (timings or {}).get(name)
                if isinstance(value, int | float):
                    self.stages[stage].observe(float(value))
        self.changed.set()

    def gpu_sample(self, busy: bool, now: float | None = None) -> None:
        """Record whether the GPU was busy since the previous sample."""
        now = time.monotonic() if now is None else now
        with self._lock:
            covered = now - (self._last_sample_at if self._last_sample_at is not None else now)
            self._last_sample_at = now
            self._samples.append((now, covered, busy))
            if busy:
                self.gpu_busy_s += covered

    def current_jobs(self) -> list[str]:
        with self._lock:
            return sorted(self.running)

    def busy_ratio(self, now: float | None = None) -> float:
        """Fraction of the sampled time in the last :data:`BUSY_WINDOW_S` seconds the GPU was busy."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._samples and self._samples[0][0] < now - BUSY_WINDOW_S:
                self._samples.popleft()
            sampled = sum(covered for _, covered, _ in self._samples)
            busy = sum(covered for _, covered, was_busy in self._samples if was_busy)
        return busy / sampled if sampled > 0 else 0.0

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        ratio = self.busy_ratio(now)
        with self._lock:
            return {
                "uptime_s": now - self.started_at,
                "current_jobs": sorted(self.running),
                "busy_seconds_total": self.gpu_busy_s,
                "busy_ratio": ratio,
                "jobs": [{"outcome": outcome, "code": code, "count": count}
                         for (outcome, code), count in sorted(self.jobs.items())],
                "stages": {stage: histogram.as_dict() for stage, histogram in self.stages.items()},
            }

"""What the chaos run observes: job states, deaths and redeliveries, and the final tally."""

from __future__ import annotations

import re
import socket
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from kombu.exceptions import OperationalError

from harness.chaos_runs import RunBook, fenced_jobs, overlaps, wasted_by_cause
from producer import keys
from producer.client import READY_STATES, DanceClient
from producer.errors import DanceError

#: How often the watcher looks at every unfinished job, in seconds.
WATCH_EVERY_S = 0.25
#: The line a restarted worker logs when it stops its predecessor's prompts (worker/orphans.py).
ORPHANS_LINE = re.compile(
    r"cleared the prompts an earlier run of \S+ left in ComfyUI: (\d+) pending .*?, (\d+) running"
)


@dataclass
class Death:
    kind: str  # worker or simulator
    name: str
    at: float
    #: job id → its attempts counter when the process died.
    jobs: dict[str, int]
    #: job id → seconds from the death until the job started again (worker) or went back (simulator).
    recovered_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Report:
    submitted: int
    succeeded: int
    failed_by_code: dict[str, int]
    cancelled: int
    lost: int
    #: Jobs whose worker-side execution counter (keys.executions) went past 1.
    duplicate_gpu_executions: int
    #: Prompts the simulators ran (their own records, merged across restarts).
    gpu_runs: int
    #: GPU runs beyond one per succeeded job, and their causes.
    wasted_gpu_runs: int
    wasted_by_cause: dict[str, int]
    #: One line per wasted run: job, simulator, prompt, worker mark, span, cause.
    wasted_runs: list[str]
    #: Pairs of runs of one job on two GPUs at the same time, one line each.
    overlapping_runs: list[str]
    #: Prompts a killed worker left running or queued in a surviving ComfyUI, stopped by its restart.
    orphan_prompts_stopped: int
    duplicate_result_writes: int
    worker_kills: int
    simulator_kills: int
    worker_terms: int
    redis_outages: int
    redelivery_s: list[float]
    comfyui_death_requeue_s: list[float]
    duration_s: float
    events: list[str]


class Watcher:
    def __init__(self, client: DanceClient, broker: redis.Redis, ids: list[str]) -> None:
        self.client, self.broker, self.ids = client, broker, ids
        self.states: dict[str, str] = dict.fromkeys(ids, "PENDING")
        self.deaths: list[Death] = []
        self.events: list[str] = []
        self._lock = threading.Lock()
        self._started = time.monotonic()

    def note(self, text: str) -> None:
        self.events.append(f"{time.monotonic() - self._started:7.1f}s {text}")

    def jobs_on(self, worker: str) -> list[str]:
        """Jobs whose execution lease ``worker`` holds right now (the liveness record lags by seconds)."""
        holder = f"{worker}@{socket.gethostname()}:"
        jobs = []
        try:
            for key in self.broker.scan_iter(match=keys.lease("*"), count=500):
                value = self.broker.get(key)
                if value is not None and _text(value).startswith(holder):
                    jobs.append(_text(key).split(":")[2])
        except redis.RedisError:
            return []
        return jobs

    def killed(self, kind: str, name: str, jobs: list[str]) -> None:
        with self._lock:
            # A lease left by an earlier death of the same worker names a job that is already waiting
            # for redelivery: it is timed from that first death only.
            pending = {job for death in self.deaths for job in death.jobs if job not in death.recovered_s}
            fresh = {job: self._attempts(job) for job in jobs if job not in pending}
            self.deaths.append(Death(kind, name, time.monotonic(), fresh))
        self.note(f"kill -9 {name} (running {', '.join(jobs) or 'nothing'})")

    def finished_fraction(self) -> float:
        return sum(state in READY_STATES for state in self.states.values()) / max(1, len(self.ids))

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(WATCH_EVERY_S):
            try:
                self._look()
            except (redis.RedisError, OperationalError, DanceError):
                continue  # the broker is restarting; look again shortly

    def wait_all(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.finished_fraction() < 1.0:
            time.sleep(WATCH_EVERY_S)

    def _look(self) -> None:
        for job_id, state in list(self.states.items()):
            if state not in READY_STATES:
                self.states[job_id] = self.client.job(job_id).status()
        now = time.monotonic()
        with self._lock:
            for death in self.deaths:
                for job_id, attempts in death.jobs.items():
                    if job_id not in death.recovered_s and self._recovered(death, job_id, attempts):
                        death.recovered_s[job_id] = now - death.at

    def _recovered(self, death: Death, job_id: str, attempts: int) -> bool:
        """Started again elsewhere (a worker died), or handed back (its ComfyUI died)."""
        if death.kind == "worker":
            return self._attempts(job_id) > attempts
        return self.states[job_id] == "REQUEUED" or self._attempts(job_id) > attempts

    def _attempts(self, job_id: str) -> int:
        return int(self.broker.get(keys.attempts(job_id)) or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def collect(watcher: Watcher, book: RunBook, duration_s: float, worker_logs: list[Path], drain_s: float) -> Report:
    codes: Counter[str] = Counter()
    executions, writes = [], []
    for job_id in watcher.ids:
        if watcher.states[job_id] == "FAILURE":
            try:
                watcher.client.job(job_id).result(timeout_s=0)
            except DanceError as exc:
                codes[exc.code] += 1
        executions.append(int(watcher.broker.get(keys.executions(job_id)) or 0))
        writes.append(int(watcher.broker.get(keys.manifest_writes(job_id)) or 0))
    states = Counter(watcher.states.values())
    deaths = watcher.deaths
    succeeded = {job for job, state in watcher.states.items() if state == "SUCCESS"}
    causes, wasted_runs = wasted_by_cause(book, succeeded, fenced_jobs(worker_logs), drain_s)
    return Report(
        submitted=len(watcher.ids),
        succeeded=states["SUCCESS"],
        failed_by_code=dict(codes),
        cancelled=states["REVOKED"],
        lost=sum(n for state, n in states.items() if state not in READY_STATES),
        duplicate_gpu_executions=sum(1 for n in executions if n > 1),
        gpu_runs=len(book.runs),
        wasted_gpu_runs=len(wasted_runs),
        wasted_by_cause=causes,
        wasted_runs=wasted_runs,
        overlapping_runs=overlaps(book.by_job()),
        orphan_prompts_stopped=_orphans_stopped(worker_logs),
        duplicate_result_writes=sum(1 for n in writes if n > 1),
        worker_kills=sum(1 for d in deaths if d.kind == "worker"),
        simulator_kills=sum(1 for d in deaths if d.kind == "simulator"),
        worker_terms=sum(1 for f in book.faults if f.kind == "term"),
        redis_outages=sum(1 for f in book.faults if f.kind == "redis"),
        redelivery_s=sorted(s for d in deaths if d.kind == "worker" for s in d.recovered_s.values()),
        comfyui_death_requeue_s=sorted(s for d in deaths if d.kind == "simulator" for s in d.recovered_s.values()),
        duration_s=round(duration_s, 1),
        events=watcher.events,
    )


def _orphans_stopped(worker_logs: list[Path]) -> int:
    text = "".join(path.read_text(errors="replace") for path in worker_logs if path.exists())
    return sum(int(pending) + int(running) for pending, running in ORPHANS_LINE.findall(text))


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a (no job was running at a kill)"
    return (f"min {min(values):.1f}s  median {statistics.median(values):.1f}s  max {max(values):.1f}s  "
            f"(n={len(values)})")


def render(report: Report) -> str:
    rows: list[tuple[str, Any]] = [
        ("submitted", report.submitted),
        ("succeeded", report.succeeded),
        ("failed, by code", report.failed_by_code or "none"),
        ("cancelled", report.cancelled),
        ("lost", report.lost),
        ("jobs on two GPUs at once", len({line.split(":")[0] for line in report.overlapping_runs})),
        ("duplicate GPU executions (jobs)", report.duplicate_gpu_executions),
        ("GPU runs (simulator records)", report.gpu_runs),
        ("wasted GPU runs", report.wasted_gpu_runs),
        ("wasted GPU runs, by cause", report.wasted_by_cause or "none"),
        ("orphan prompts stopped", report.orphan_prompts_stopped),
        ("duplicate result writes", report.duplicate_result_writes),
        ("kills: workers / simulators", f"{report.worker_kills} / {report.simulator_kills}"),
        ("SIGTERMs of workers / Redis outages", f"{report.worker_terms} / {report.redis_outages}"),
        ("worker death → job redelivered", _spread(report.redelivery_s)),
        ("ComfyUI death → job requeued", _spread(report.comfyui_death_requeue_s)),
        ("duration", f"{report.duration_s}s"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines + [f"OVERLAP {line}" for line in report.overlapping_runs])

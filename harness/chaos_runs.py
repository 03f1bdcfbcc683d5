"""The GPU runs of a chaos run, from the simulators' own records: overlaps and the cause of each wasted run.

A simulator keeps its run records in memory and a kill -9 loses them, with the record of the prompt it was
running. So the book polls every simulator's GET /__sim__/state (finished runs) and /queue (the running
prompt, with its extra_data) every second and right before each kill, and merges by prompt id; the prompt a
killed simulator was running becomes a record from the first poll that saw it running to the kill (a
subset of its real span, so an overlap found with it is a real one).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

#: How often the book polls every simulator, in seconds.
POLL_EVERY_S = 1.0
#: Timeout of one poll of one simulator, in seconds.
POLL_TIMEOUT_S = 2.0
#: The line a worker logs when a heartbeat finds another run holding its job's lease (worker/ownership).
FENCED_LINE = re.compile(r"job (\S+): another run holds its execution lease now")


@dataclass(frozen=True)
class GpuRun:
    prompt_id: str
    started_at: float
    ended_at: float
    job_id: str | None
    #: ``<worker name>@<host>/<process token>``, or None.
    mark: str | None
    simulator: str
    #: True when the simulator died running it: its span is the one the polls saw.
    cut_by_kill: bool = False

    @property
    def worker(self) -> str | None:
        return None if self.mark is None else self.mark.split("@", 1)[0]


@dataclass(frozen=True)
class Fault:
    """Something the chaos monkey did, in epoch seconds: kill (worker/simulator), term, redis."""

    kind: str
    name: str
    at: float
    until: float


@dataclass
class RunBook:
    ports: dict[str, int]
    runs: dict[str, GpuRun] = field(default_factory=dict)
    #: simulator → prompt id → (first seen running, job id, mark).
    live: dict[str, dict[str, tuple[float, str | None, str | None]]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(POLL_EVERY_S):
            self.poll_all()

    def poll_all(self) -> None:
        for name in self.ports:
            self.poll(name)

    def poll(self, name: str) -> None:
        base = f"http://127.0.0.1:{self.ports[name]}"
        try:
            state = requests.get(f"{base}/__sim__/state", timeout=POLL_TIMEOUT_S).json()
            queue = requests.get(f"{base}/queue", timeout=POLL_TIMEOUT_S).json()
        except (requests.RequestException, ValueError):
            return  # down or restarting: its records were taken before the kill
        now = time.time()
        with self._lock:
            for prompt_id, started, ended, job_id, mark in state.get("runs", []):
                self.runs[prompt_id] = GpuRun(prompt_id, started, ended, job_id, mark, name)
            live = self.live.setdefault(name, {})
            for item in queue.get("queue_running", []):
                extra = item[3] if len(item) > 3 and isinstance(item[3], dict) else {}
                live.setdefault(item[1], (now, extra.get("dance_job_id"), extra.get("dance_worker")))
            for prompt_id in [p for p in live if p in self.runs]:
                del live[prompt_id]

    def simulator_killed(self, name: str, at: float) -> None:
        """Call right after the kill: the prompt it was running becomes a record that ends now."""
        with self._lock:
            for prompt_id, (seen, job_id, mark) in self.live.pop(name, {}).items():
                if prompt_id not in self.runs:
                    self.runs[prompt_id] = GpuRun(prompt_id, seen, at, job_id, mark, name, cut_by_kill=True)

    def fault(self, kind: str, name: str, at: float, until: float | None = None) -> None:
        with self._lock:
            self.faults.append(Fault(kind, name, at, at if until is None else until))

    def by_job(self) -> dict[str, list[GpuRun]]:
        jobs: dict[str, list[GpuRun]] = defaultdict(list)
        with self._lock:
            for gpu_run in self.runs.values():
                if gpu_run.job_id is not None:
                    jobs[gpu_run.job_id].append(gpu_run)
        return {job: sorted(runs, key=lambda r: r.started_at) for job, runs in jobs.items()}


def overlaps(by_job: dict[str, list[GpuRun]]) -> list[str]:
    """One line per pair of runs of one job that were on two GPUs at the same time."""
    found = []
    for job_id, runs in sorted(by_job.items()):
        for index, first in enumerate(runs):
            for second in runs[index + 1:]:
                if second.started_at < first.ended_at:
                    found.append(
                        f"{job_id}: {first.simulator} {first.prompt_id} ({first.mark}) "
                        f"{first.started_at:.2f}-{first.ended_at:.2f} and {second.simulator} "
                        f"{second.prompt_id} ({second.mark}) {second.started_at:.2f}-{second.ended_at:.2f}"
                    )
    return found


def fenced_jobs(worker_logs: list[Path]) -> dict[str, set[str]]:
    """worker name → jobs whose run a heartbeat fenced."""
    fenced: dict[str, set[str]] = {}
    for path in worker_logs:
        text = path.read_text(errors="replace") if path.exists() else ""
        fenced[path.stem] = set(FENCED_LINE.findall(text))
    return fenced


def wasted_by_cause(book: RunBook, succeeded: set[str], fenced: dict[str, set[str]],
                    drain_s: float) -> tuple[dict[str, int], list[str]]:
    """Runs beyond one per succeeded job (every run of a job that did not succeed), counted by cause, and
    one line per wasted run.

    The last run of a succeeded job is taken as the one that made its result; each earlier run is blamed on
    the first fault that explains it: its simulator died running it; the worker process that queued it (its
    mark carries a per-process token) was killed or told to stop before the run ended; a heartbeat fenced
    it; Redis was away while it ran; else it was interrupted or is unexplained.
    """
    deaths = _process_deaths(book, drain_s)
    causes: Counter[str] = Counter()
    lines = []
    for job_id, runs in sorted(book.by_job().items()):
        extra = runs[:-1] if job_id in succeeded else runs
        for gpu_run in extra:
            cause = _cause(gpu_run, deaths, book.faults, fenced)
            causes[cause] += 1
            lines.append(f"{job_id} {gpu_run.simulator} {gpu_run.prompt_id} {gpu_run.mark} "
                         f"{gpu_run.started_at:.2f}-{gpu_run.ended_at:.2f}: {cause}")
    return dict(causes), lines


def _process_deaths(book: RunBook, drain_s: float) -> dict[str, Fault]:
    """worker mark → the fault that ended that process: the first kill or SIGTERM after its first run
    began, or the kill that cut the drain a SIGTERM started."""
    first_start: dict[str, float] = {}
    for gpu_run in book.runs.values():
        if gpu_run.mark is not None:
            first_start[gpu_run.mark] = min(first_start.get(gpu_run.mark, gpu_run.started_at), gpu_run.started_at)
    deaths = {}
    for mark, started in first_start.items():
        worker = mark.split("@", 1)[0]
        after = sorted((f for f in book.faults if f.kind in ("kill", "term") and f.name == worker
                        and f.at >= started), key=lambda f: f.at)
        if not after:
            continue
        death = after[0]
        cut = [f for f in after[1:] if f.kind == "kill" and f.at <= death.at + drain_s]
        deaths[mark] = Fault("kill during drain", worker, cut[0].at, cut[0].at) if death.kind == "term" and cut \
            else death
    return deaths


def _cause(gpu_run: GpuRun, deaths: dict[str, Fault], faults: list[Fault], fenced: dict[str, set[str]]) -> str:
    if gpu_run.cut_by_kill:
        return "simulator killed"
    death = deaths.get(gpu_run.mark or "")
    if death is not None and gpu_run.ended_at >= death.at:
        names = {"kill": "worker killed", "term": "worker stopped (SIGTERM)"}
        return names.get(death.kind, "worker killed while draining")
    if gpu_run.worker is not None and gpu_run.job_id in fenced.get(gpu_run.worker, set()):
        return "fenced run"
    for fault in faults:
        if fault.kind == "redis" and fault.at <= gpu_run.ended_at and gpu_run.started_at <= fault.until:
            return "redis outage"
    return "interrupted or unexplained"


def summary(book: RunBook) -> dict[str, Any]:
    return {"gpu_runs": len(book.runs), "cut_by_kill": sum(r.cut_by_kill for r in book.runs.values())}

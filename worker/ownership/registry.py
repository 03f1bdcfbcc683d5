"""Every job run this worker holds, keyed by run: one source of truth for "what is mine".

A run is one start of the task body for one delivery of a job's message. Two runs of one job can meet on
one worker (kombu restores a running job's message when the broker connection drops, and the same worker
may take the copy), and they share the job id and the delivery tag, so neither can be the key: each run
gets a key of its own. A run records the message it holds (for the heartbeat), its execution lease token
once it has one, its ComfyUI prompt, its cancel flag and its pipeline phase. The pipeline reads the phases,
cleanup reads the prompts and jobs in flight, the pool's terminate and the drain set cancel flags, and the
heartbeat renews what the runs own.

``beat_lock`` orders the heartbeat against a run's end: a run gives up its lease and leaves the registry only
between two beats, so a beat can never renew a released lease or put back the ``unacked`` entry of a message
that was just acknowledged.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from worker.ownership.cancels import FENCED, REVOKED, SHUTDOWN, CancelFlag
from worker.ownership.kombu_compat import HeldMessage

#: A redelivered copy deciding whether the job's lease holder is alive: holds a thread, not the GPU.
CLAIMING = "claiming"
PREPARING, WAITING, EXECUTING, FINISHING = "preparing", "waiting", "executing", "finishing"


@dataclass
class Run:
    job_id: str
    message: HeldMessage | None
    key: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    cancel: CancelFlag = field(default_factory=CancelFlag)
    #: A run counts as staged from its start, like any job taken ahead; only a copy that waits on another
    #: run's lease is CLAIMING, which holds a thread but no GPU.
    phase: str = PREPARING
    #: The execution lease token while this run holds the lease (worker/ownership/leases.py).
    lease_token: str | None = None
    prompt_id: str | None = None


@dataclass(frozen=True)
class Ward:
    """The message of a dropped copy, kept in kombu's bookkeeping for a while on behalf of the live run.

    The copy's acknowledgement deletes the ``unacked`` entry it shares with the live run; the live run's
    heartbeat puts it back within one beat, unless that run dies first. So the dropping worker puts it back
    too, while the job's lease is held, until ``until`` (a monotonic time): if the holder died meanwhile,
    its job is still redelivered once its lease and message expire.
    """

    job_id: str
    message: HeldMessage
    until: float


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.beat_lock = threading.Lock()
        self._runs: dict[str, Run] = {}
        self._wards: list[Ward] = []

    @contextmanager
    def holding(self, job_id: str, message: HeldMessage | None, revoked: bool = False) -> Iterator[Run]:
        """Register a run for its whole life; ``revoked`` when a revoke reached the job before it started."""
        run = Run(job_id, message)
        if revoked:
            run.cancel.set(REVOKED)
        with self._lock:
            self._runs[run.key] = run
        try:
            yield run
        finally:
            with self.beat_lock, self._lock:
                self._runs.pop(run.key, None)

    def take_lease(self, run: Run, token: str) -> None:
        with self.beat_lock:
            run.lease_token = token

    def drop_lease(self, run: Run) -> str | None:
        """Stop renewing the run's lease; returns its token so the caller can release it."""
        with self.beat_lock:
            token, run.lease_token = run.lease_token, None
        return token

    def runs(self) -> list[Run]:
        with self._lock:
            return list(self._runs.values())

    def job_ids(self) -> list[str]:
        return sorted({run.job_id for run in self.runs()})

    def prompt_ids(self) -> frozenset[str]:
        return frozenset(run.prompt_id for run in self.runs() if run.prompt_id)

    def holder_alive_here(self, job_id: str, token: str) -> bool:
        """Whether the lease ``token`` belongs to a live run on this worker."""
        return any(run.job_id == job_id and run.lease_token == token for run in self.runs())

    def ward(self, job_id: str, message: HeldMessage | None, for_s: float) -> None:
        if message is not None and message.entry is not None:
            with self._lock:
                self._wards.append(Ward(job_id, message, time.monotonic() + for_s))

    def wards(self) -> list[Ward]:
        """The wards still due; expired ones are forgotten."""
        now = time.monotonic()
        with self._lock:
            self._wards = [ward for ward in self._wards if ward.until > now]
            return list(self._wards)

    def fence(self, run: Run) -> None:
        run.cancel.set(FENCED)

    def terminate(self, revoked: set[str], held_job_ids: set[str]) -> None:
        """A pool terminate: stop the revoked jobs this worker holds; if it holds none of them, the
        terminate comes from a shutdown and every run stops."""
        targets = revoked & held_job_ids
        if targets:
            for run in self.runs():
                if run.job_id in targets:
                    run.cancel.set(REVOKED)
            return
        self.shutdown_all()

    def shutdown_all(self) -> None:
        for run in self.runs():
            run.cancel.set(SHUTDOWN)

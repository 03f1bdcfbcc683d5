"""What ``dance cluster`` shows, gathered from Redis and one broadcast: workers, queue depths, job rate.

Everything comes from the broker, so any machine with its URL can look: the liveness records and metric
snapshots workers keep in Redis, kombu's queue bindings and priority lists, the per-minute counters of
ended jobs (:mod:`producer.ledger`), and a broadcast ``inspect active`` for what each node runs now
(this also finds nodes that keep no liveness record, such as the hooks worker).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from kombu.exceptions import OperationalError

from producer import keys
from producer.celeryconf import PRIORITY_SEPARATOR, PRIORITY_STEPS
from producer.ledger import HOOKS_QUEUE

if TYPE_CHECKING:
    from producer.client import DanceClient

#: Where kombu's Redis transport keeps each exchange's bindings (members: key, pattern, queue).
BINDING_PATTERN = "_kombu.binding.*"
#: Separator inside a binding member.
BINDING_SEPARATOR = b"\x06\x16"
#: Minutes over which the job rate is averaged.
RATE_WINDOW_MIN = 5
#: How long ``dance cluster`` waits for inspect replies, in seconds.
DEFAULT_INSPECT_TIMEOUT_S = 1.0


@dataclass
class WorkerView:
    hostname: str
    ready: bool | None = None
    consuming: bool | None = None
    device: str | None = None
    queues: list[str] = field(default_factory=list)
    current_jobs: list[str] = field(default_factory=list)
    readiness: str = ""
    busy_ratio: float | None = None
    #: False for a node that answers inspect but keeps no liveness record (the hooks worker).
    gpu_worker: bool = True

    @property
    def busy(self) -> bool:
        return bool(self.current_jobs)


@dataclass
class QueueDepth:
    queue: str
    by_priority: dict[int, int]

    @property
    def total(self) -> int:
        return sum(self.by_priority.values())


@dataclass
class ClusterView:
    workers: list[WorkerView]
    queues: list[QueueDepth]
    ended_in_window: int
    window_min: int = RATE_WINDOW_MIN

    @property
    def jobs_per_min(self) -> float:
        return self.ended_in_window / self.window_min

    def as_dict(self) -> dict[str, Any]:
        return {
            "workers": [{**vars(w), "busy": w.busy} for w in self.workers],
            "queues": [{"queue": q.queue, "by_priority": q.by_priority, "total": q.total} for q in self.queues],
            "jobs_ended": {"window_min": self.window_min, "count": self.ended_in_window,
                           "per_min": round(self.jobs_per_min, 2)},
        }


def discover_queues(client: redis.Redis, extra: list[str]) -> list[str]:
    """Queue names kombu has bound on this broker, plus ``extra`` (the default and hooks queues)."""
    names = set(extra)
    for key in client.scan_iter(match=BINDING_PATTERN, count=100):
        for member in client.smembers(key):
            raw = member if isinstance(member, bytes) else str(member).encode()
            names.add(raw.split(BINDING_SEPARATOR)[-1].decode())
    return sorted(name for name in names if name and not name.endswith(".pidbox") and "celeryev" not in name)


def queue_depths(client: redis.Redis, queues: list[str]) -> list[QueueDepth]:
    """Messages waiting per queue and priority (kombu keeps priority 0 in the queue's own list)."""
    pipe = client.pipeline()
    for queue in queues:
        for step in PRIORITY_STEPS:
            pipe.llen(f"{queue}{PRIORITY_SEPARATOR}{step}" if step else queue)
    counts = iter(pipe.execute())
    return [QueueDepth(queue, {step: int(next(counts)) for step in PRIORITY_STEPS}) for queue in queues]


def ended_in_window(client: redis.Redis, window_min: int = RATE_WINDOW_MIN) -> int:
    now_min = int(time.time() // 60)
    values = client.mget([keys.ended_per_minute(now_min - i) for i in range(window_min)])
    return sum(int(v) for v in values if v)


def read_records(client: redis.Redis, pattern: str) -> list[dict[str, Any]]:
    """Every JSON record under keys matching ``pattern`` (liveness records, metric snapshots)."""
    names = list(client.scan_iter(match=pattern, count=100))
    values = client.mget(names) if names else []
    return [json.loads(value) for value in values if value]


def _readiness(record: dict[str, Any]) -> str:
    """A liveness record's word for the worker's state (worker/liveness.py: ``warming`` while it warms up)."""
    if record.get("ready"):
        return "ready"
    return "warming up" if record.get("warming") else "waiting for ComfyUI"


def worker_views(client: redis.Redis, active: dict[str, list[dict[str, Any]]] | None) -> list[WorkerView]:
    views: dict[str, WorkerView] = {}
    for record in read_records(client, keys.WORKER_LIVENESS_PATTERN):
        views[record["hostname"]] = WorkerView(
            hostname=record["hostname"], ready=bool(record.get("ready")), consuming=bool(record.get("consuming")),
            device=record.get("device"), queues=list(record.get("queues") or []),
            readiness=_readiness(record),
        )
    for snapshot in read_records(client, keys.WORKER_METRICS_PATTERN):
        view = views.get(snapshot["hostname"])
        if view is not None:
            # The snapshot is published the moment readiness or the current job changes; the liveness
            # record only every few seconds, so the snapshot's word wins.
            view.ready = bool(snapshot.get("ready"))
            view.device = snapshot.get("device") or view.device
            view.current_jobs = list(snapshot.get("current_jobs") or [])
            view.readiness = str(snapshot.get("readiness") or view.readiness)
            view.busy_ratio = snapshot.get("busy_ratio")
    for hostname, tasks in (active or {}).items():
        view = views.setdefault(hostname, WorkerView(hostname=hostname, gpu_worker=False, readiness="no record"))
        view.current_jobs = sorted(set(view.current_jobs) | {str(task.get("id")) for task in tasks})
    return sorted(views.values(), key=lambda v: (not v.gpu_worker, v.hostname))


def cluster_view(client: DanceClient, inspect_timeout_s: float = DEFAULT_INSPECT_TIMEOUT_S) -> ClusterView:
    try:
        active = client.app.control.inspect(timeout=inspect_timeout_s).active() if inspect_timeout_s > 0 else None
    except OperationalError as exc:
        raise client._unreachable(exc) from exc

    def read() -> ClusterView:
        workers = worker_views(client.redis, active)
        extra = [client.settings.default_queue, HOOKS_QUEUE] + [q for w in workers for q in w.queues]
        queues = queue_depths(client.redis, discover_queues(client.redis, extra))
        return ClusterView(workers, queues, ended_in_window(client.redis))

    view: ClusterView = client._guard(read)
    return view

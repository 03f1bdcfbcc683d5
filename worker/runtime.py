"""Everything a running worker shares between its gate and its jobs, built once when the worker boots."""

from __future__ import annotations

import logging
import tempfile
import threading
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from celery import bootsteps, signals
from celery.worker import state as worker_state
from redis.backoff import AbstractBackoff
from redis.retry import Retry

from producer.redisurl import redis_client
from worker.backoff import Backoff
from worker.cleanup import InFlight, Janitor
from worker.comfy_http import ComfyHttp
from worker.ownership.heartbeat import Heartbeat
from worker.ownership.kombu_compat import UnackedIndex
from worker.ownership.leases import ExecutionLeases
from worker.ownership.registry import Registry
from worker.pipeline import Pipeline
from worker.progress import state_write_thread
from worker.settings import WorkerSettings
from worker.startup import Timeline
from worker.storage import Storage, open_storage
from worker.workflow import Workflow, load_workflow

if TYPE_CHECKING:
    from worker.gate import ComfyGate

log = logging.getLogger(__name__)

#: Timeout of the bookkeeping Redis client's calls, in seconds.
REDIS_TIMEOUT_S = 5.0
#: Pauses between the retries of a bookkeeping call while the broker is away; how many retries follows
#: from ``DANCE_REDIS_RETRY_S`` (the default 30 s gives 12 retries, 30.3 s of nominal pauses).
REDIS_RETRY_BACKOFF = Backoff(base_s=0.1, cap_s=4.0)
#: Timeout of the heartbeat's own Redis calls, in seconds: it retries on its own, fast, and must never
#: hang on a dead connection while leases run out.
HEARTBEAT_REDIS_TIMEOUT_S = 2.0


class RedisBackoff(AbstractBackoff):
    """The project's one backoff rule, in the shape redis-py's Retry expects."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff

    def compute(self, failures: int) -> float:
        return self.backoff.delay_s(max(0, failures - 1))


def retries_within(budget_s: float, backoff: Backoff) -> int:
    """The fewest retries whose nominal (unjittered) pauses add up to ``budget_s`` or more: how long a call
    keeps trying while the broker refuses connections (jitter shortens each pause by up to a fifth)."""
    retries, waited_s = 0, 0.0
    while waited_s < budget_s:
        waited_s += min(backoff.cap_s, backoff.base_s * backoff.factor ** retries)
        retries += 1
    return retries


@dataclass
class Runtime:
    settings: WorkerSettings
    workflow: Workflow
    http: ComfyHttp
    storage: Storage
    work_dir: Path
    #: A plain client of the broker's Redis, for the job bookkeeping keys of producer/keys.py.
    redis: redis.Redis
    leases: ExecutionLeases
    #: Every run this worker holds (worker/ownership/registry.py).
    registry: Registry
    pipeline: Pipeline
    heartbeat: Heartbeat
    gate: ComfyGate | None = None
    #: The device ComfyUI runs on, as its /system_stats names it; set by the gate.
    device: str | None = None
    #: What ComfyUI offers (producer/capabilities.py), from the gate's last full readiness check.
    capabilities: dict[str, Any] | None = None
    #: When this process reached each start-up milestone (worker/startup.py).
    timeline: Timeline = field(default_factory=Timeline)
    #: The one thread that makes every job's STARTED and PROGRESS writes (worker/progress.py).
    state_writes: Executor = field(default_factory=state_write_thread)
    janitor: Janitor = field(init=False)

    def __post_init__(self) -> None:
        self.janitor = Janitor(self.http, self.settings.comfyui_input_dir, self.settings.comfyui_output_dir,
                               self.in_flight)

    def in_flight(self) -> InFlight:
        """Prompts and jobs of this worker that are still running: cleanup leaves them alone."""
        return InFlight(self.registry.prompt_ids(), frozenset(self.registry.job_ids()))

    @classmethod
    def build(cls, settings: WorkerSettings, global_keyprefix: str = "") -> Runtime:
        work_dir = settings.work_dir or Path(tempfile.mkdtemp(prefix="dance-worker-"))
        work_dir.mkdir(parents=True, exist_ok=True)
        client = redis_client(
            settings.broker_url, settings.sentinel_master,
            socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
            # A broker restart (AOF reload) must not fail the jobs running meanwhile.
            retry=Retry(RedisBackoff(REDIS_RETRY_BACKOFF), retries_within(settings.redis_retry_s, REDIS_RETRY_BACKOFF)),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        registry = Registry()
        leases = ExecutionLeases(client, ttl_s=settings.lease_ttl_s)
        beat_client = redis_client(
            settings.broker_url, settings.sentinel_master,
            socket_timeout=HEARTBEAT_REDIS_TIMEOUT_S, socket_connect_timeout=HEARTBEAT_REDIS_TIMEOUT_S,
        )
        heartbeat = Heartbeat(registry, leases, UnackedIndex(beat_client, global_keyprefix), beat_client,
                              interval_s=settings.heartbeat_interval_s, held_tags=held_delivery_tags)
        return cls(
            settings=settings,
            workflow=load_workflow(settings.workflow_path),
            http=ComfyHttp(settings.comfyui_url, settings.comfyui_http_timeout_s),
            storage=open_storage(settings.storage_url, presign_expires_s=settings.presign_expires_s),
            work_dir=work_dir,
            redis=client,
            leases=leases,
            registry=registry,
            pipeline=Pipeline(client, settings.queues, settings.pipeline_depth, registry),
            heartbeat=heartbeat,
        )

    def drain(self, sig: str | None = None, how: str | None = None, **_: Any) -> None:
        """SIGTERM (warm shutdown): Celery takes no new job and waits for the running one; it may go on
        for ``drain_s``, then it interrupts its prompt and goes back to the queue. A cold shutdown
        (SIGQUIT, or a second SIGTERM) hands it back at once."""
        if how == "Warm" and self.settings.drain_s > 0:
            log.warning("%s: draining; the running job has %.0fs to finish before it is handed back",
                        sig, self.settings.drain_s)
            timer = threading.Timer(self.settings.drain_s, self.registry.shutdown_all)
            timer.daemon = True
            timer.start()
        else:
            self.registry.shutdown_all()

    @staticmethod
    def current(app: Any) -> Runtime:
        runtime = getattr(app, "dance_runtime", None)
        if runtime is None:
            raise RuntimeError("the dance runtime is built by the worker's RuntimeStep; "
                               "start workers with `dance worker` or `celery -A worker.app worker`")
        return runtime  # type: ignore[no-any-return]


def held_delivery_tags() -> list[str]:
    """Delivery tags of every message this worker holds (read from the heartbeat's thread)."""
    for _ in range(3):
        try:
            requests = list(worker_state.reserved_requests)
        except RuntimeError:  # the event loop changed the set while we copied it; try again
            continue
        return [str(request.message.delivery_tag) for request in requests
                if getattr(request, "message", None) is not None]
    return []


class RuntimeStep(bootsteps.StartStopStep):
    """Worker step that builds the :class:`Runtime` before any consumer step needs it.

    Worker steps are created before the Consumer (Celery puts the Consumer step last), so the gate
    and every job find the runtime ready. A bad workflow or storage URL stops the worker here, with
    the error's code, before it connects anywhere.
    """

    name = "dance.runtime"

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        settings: WorkerSettings = w.app.conf["dance_settings"]
        prefix = str((w.app.conf.broker_transport_options or {}).get("global_keyprefix", ""))
        runtime = w.app.dance_runtime = Runtime.build(settings, global_keyprefix=prefix)
        signals.worker_shutting_down.connect(runtime.drain, weak=False)
        # worker_shutdown comes after the pool has drained (WorkController.stop): the heartbeat must outlive
        # every running job, so it is not stopped with the steps.
        signals.worker_shutdown.connect(lambda **_: runtime.heartbeat.stop(), weak=False)
        log.info("dance runtime: workflow %s, ComfyUI %s, storage %s",
                 settings.workflow_path, settings.comfyui_url, settings.storage_url)

    def start(self, w: Any) -> None:
        Runtime.current(w.app).heartbeat.start()

    def shutdown(self, w: Any) -> None:
        """The worker stops: let the cleanups already handed over finish."""
        Runtime.current(w.app).janitor.close()

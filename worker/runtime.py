"""Everything a running worker shares between its gate and its jobs, built once when the worker boots."""

from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from celery import bootsteps, signals
from redis.backoff import AbstractBackoff
from redis.retry import Retry

from producer.redisurl import redis_client
from worker.backoff import Backoff
from worker.cancels import CancelRegistry
from worker.cleanup import InFlight, Janitor
from worker.comfy_http import ComfyHttp
from worker.leases import ExecutionLeases
from worker.pipeline import Pipeline
from worker.settings import WorkerSettings
from worker.storage import Storage, open_storage
from worker.workflow import Workflow, load_workflow

if TYPE_CHECKING:
    from worker.gate import ComfyGate

log = logging.getLogger(__name__)

#: Timeout of the bookkeeping Redis client's calls, in seconds.
REDIS_TIMEOUT_S = 5.0
#: Retries of a bookkeeping call while the broker is away: about 30 s in all with this backoff.
REDIS_RETRIES = 12
REDIS_RETRY_BACKOFF = Backoff(base_s=0.1, cap_s=4.0)


class RedisBackoff(AbstractBackoff):
    """The project's one backoff rule, in the shape redis-py's Retry expects."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff

    def compute(self, failures: int) -> float:
        return self.backoff.delay_s(max(0, failures - 1))


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
    pipeline: Pipeline
    cancels: CancelRegistry = field(default_factory=CancelRegistry)
    #: ComfyUI prompt ids of the jobs this worker is running now; cleanup leaves their history alone.
    prompts_in_flight: set[str] = field(default_factory=set)
    gate: ComfyGate | None = None
    #: The device ComfyUI runs on, as its /system_stats names it; set by the gate.
    device: str | None = None
    janitor: Janitor = field(init=False)

    def __post_init__(self) -> None:
        self.janitor = Janitor(self.http, self.settings.comfyui_input_dir, self.settings.comfyui_output_dir,
                               self.in_flight)

    def in_flight(self) -> InFlight:
        """Prompts and jobs of this worker that are still running: cleanup leaves them alone."""
        return InFlight(frozenset(self.prompts_in_flight), frozenset(self.cancels.running_ids()))

    @classmethod
    def build(cls, settings: WorkerSettings) -> Runtime:
        work_dir = settings.work_dir or Path(tempfile.mkdtemp(prefix="dance-worker-"))
        work_dir.mkdir(parents=True, exist_ok=True)
        client = redis_client(
            settings.broker_url, settings.sentinel_master,
            socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
            # A broker restart (AOF reload) must not fail the jobs running meanwhile.
            retry=Retry(RedisBackoff(REDIS_RETRY_BACKOFF), REDIS_RETRIES),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        return cls(
            settings=settings,
            workflow=load_workflow(settings.workflow_path),
            http=ComfyHttp(settings.comfyui_url, settings.comfyui_http_timeout_s),
            storage=open_storage(settings.storage_url, presign_expires_s=settings.presign_expires_s),
            work_dir=work_dir,
            redis=client,
            leases=ExecutionLeases(client, ttl_s=settings.visibility_timeout_s),
            pipeline=Pipeline(client, settings.queues, settings.pipeline_depth),
        )

    def drain(self, sig: str | None = None, how: str | None = None, **_: Any) -> None:
        """SIGTERM (warm shutdown): Celery takes no new job and waits for the running one; it may go on
        for ``drain_s``, then it interrupts its prompt and goes back to the queue. A cold shutdown
        (SIGQUIT, or a second SIGTERM) hands it back at once."""
        if how == "Warm" and self.settings.drain_s > 0:
            log.warning("%s: draining; the running job has %.0fs to finish before it is handed back",
                        sig, self.settings.drain_s)
            timer = threading.Timer(self.settings.drain_s, self.cancels.shutdown_all)
            timer.daemon = True
            timer.start()
        else:
            self.cancels.shutdown_all()

    @staticmethod
    def current(app: Any) -> Runtime:
        runtime = getattr(app, "dance_runtime", None)
        if runtime is None:
            raise RuntimeError("the dance runtime is built by the worker's RuntimeStep; "
                               "start workers with `dance worker` or `celery -A worker.app worker`")
        return runtime  # type: ignore[no-any-return]


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
        runtime = w.app.dance_runtime = Runtime.build(settings)
        signals.worker_shutting_down.connect(runtime.drain, weak=False)
        log.info("dance runtime: workflow %s, ComfyUI %s, storage %s",
                 settings.workflow_path, settings.comfyui_url, settings.storage_url)

    def shutdown(self, w: Any) -> None:
        """The worker stops: let the cleanups already handed over finish."""
        Runtime.current(w.app).janitor.close()

"""The hooks worker's Celery app: ``dance hooks-worker`` or ``celery -A worker.hooks.app worker``.

It consumes only :data:`~producer.ledger.HOOKS_QUEUE` with a pool of threads, has no readiness gate and
never talks to ComfyUI, so GPU workers and webhook deliveries cannot slow each other down: a dead or
hanging callback endpoint ties up a hooks thread until its timeout, never a GPU. Its outbox reconciler
(worker/hooks/reconciler.py) runs beside the pool, started and stopped by :class:`ReconcilerStep`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery, bootsteps
from kombu.entity import Queue

from producer.celeryconf import LazyConfig, shared_config
from producer.client import DanceClient
from producer.ledger import HOOKS_QUEUE
from producer.redisurl import redis_client
from producer.settings import ProducerSettings
from worker.backoff import Backoff
from worker.hooks.reconciler import Reconciler
from worker.hooks.settings import HooksSettings
from worker.inputs.guard import AllowList
from worker.peers import without_gossip_and_mingle
from worker.result_backend import OVERRIDE_BACKENDS

#: Timeout of the hooks worker's Redis calls, in seconds.
REDIS_TIMEOUT_S = 5.0


def hooks_config(settings: HooksSettings) -> dict[str, Any]:
    config = shared_config(settings.broker_url, settings.result_backend, settings.result_expires_s,
                           settings.sentinel_master)
    config.update({
        "dance_hooks_settings": settings,
        "override_backends": OVERRIDE_BACKENDS,
        "task_queues": [Queue(HOOKS_QUEUE, routing_key=HOOKS_QUEUE)],  # type: ignore[no-untyped-call]
        "task_default_queue": HOOKS_QUEUE,
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": settings.concurrency,
        "worker_pool": "threads",
        "worker_send_task_events": True,
        # A message for an entry already delivered, given up or claimed is dropped without touching its
        # result (worker/hooks/tasks.py); a STARTED write would overwrite that result first.
        "task_track_started": False,
    })
    return config


@dataclass
class HooksRuntime:
    settings: HooksSettings
    #: The producer API on the same broker: reads batches and job states as any producer would.
    client: DanceClient
    redis: redis.Redis
    allow: AllowList
    backoff: Backoff

    @staticmethod
    def current(app: Any) -> HooksRuntime:
        runtime = getattr(app, "dance_hooks_runtime", None)
        if runtime is None:
            raise RuntimeError("the hooks runtime is built by HooksRuntimeStep; start `dance hooks-worker`")
        return runtime  # type: ignore[no-any-return]


class HooksRuntimeStep(bootsteps.Step):
    """Builds the :class:`HooksRuntime` once, when the worker boots."""

    name = "dance.hooks_runtime"

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        settings: HooksSettings = w.app.conf["dance_hooks_settings"]
        client = DanceClient(ProducerSettings(broker_url=settings.broker_url, result_backend=settings.result_backend,
                                              sentinel_master=settings.sentinel_master))
        w.app.dance_hooks_runtime = HooksRuntime(
            settings=settings, client=client, redis=_redis(settings),
            allow=AllowList.parse(settings.allow_hosts),
            backoff=Backoff(base_s=settings.retry_base_s, cap_s=settings.retry_cap_s),
        )


class ReconcilerStep(bootsteps.StartStopStep):
    """Runs the outbox reconciler while the worker runs, on a Redis connection of its own."""

    name = "dance.outbox_reconciler"
    requires = (HooksRuntimeStep,)

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        self.reconciler: Reconciler | None = None

    def start(self, w: Any) -> None:
        settings = HooksRuntime.current(w.app).settings
        self.reconciler = Reconciler(_redis(settings), w.app, settings.reconcile_interval_s,
                                     settings.republish_after_s)
        self.reconciler.start()

    def stop(self, w: Any) -> None:
        if self.reconciler is not None:
            self.reconciler.stop()
            self.reconciler = None


def _redis(settings: HooksSettings) -> redis.Redis:
    return redis_client(settings.broker_url, settings.sentinel_master, socket_timeout=REDIS_TIMEOUT_S,
                        socket_connect_timeout=REDIS_TIMEOUT_S)


app = Celery("dance-hooks", include=["worker.hooks.tasks"], set_as_current=False)
app.config_from_object(LazyConfig(lambda: hooks_config(HooksSettings.from_env())))
app.steps["worker"].add(HooksRuntimeStep)
app.steps["worker"].add(ReconcilerStep)
without_gossip_and_mingle(app)

"""Liveness: the worker publishes what it is doing as a Redis key with a TTL.

``dance check`` (the Docker HEALTHCHECK) reads it. The key expires when the worker dies or its event
loop stalls, and says ``ready: false`` while the gate waits for ComfyUI, so a health check, like every
other view, sees the worker as ready only once ComfyUI is.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import redis
from celery import bootsteps

from producer import keys
from worker.runtime import Runtime

log = logging.getLogger(__name__)

#: How often the record is refreshed, in seconds.
LIVENESS_INTERVAL_S = 5.0
#: Lifetime of the record, in seconds: three missed refreshes mean the worker is gone.
LIVENESS_TTL_S = 15


def liveness_record(c: Any, runtime: Runtime) -> dict[str, Any]:
    gate = runtime.gate
    ready = bool(gate is not None and gate.ready.is_set())
    consuming = bool(c.task_consumer is not None and gate is not None and not gate.detached
                     and c.task_consumer.queues)
    return {
        "hostname": c.hostname,
        "pid": os.getpid(),
        "ready": ready,
        "consuming": consuming,
        "queues": [queue.name for queue in c.task_consumer.queues] if c.task_consumer else [],
        "device": runtime.device,
        "ready_after_s": gate.ready_after_s if gate is not None else None,
        "updated_at": time.time(),
    }


class Liveness(bootsteps.StartStopStep):
    requires = ("worker.gate:ComfyGate",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.timer_ref: Any = None

    def start(self, c: Any) -> None:
        self.publish(c)
        self.timer_ref = c.timer.call_repeatedly(LIVENESS_INTERVAL_S, self.publish, (c,), priority=10)

    def stop(self, c: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        try:
            Runtime.current(c.app).redis.delete(keys.worker_liveness(c.hostname))
        except redis.RedisError:
            log.debug("could not delete the liveness key on shutdown", exc_info=True)

    def publish(self, c: Any) -> None:
        runtime = Runtime.current(c.app)
        record = liveness_record(c, runtime)
        try:
            runtime.redis.set(keys.worker_liveness(c.hostname), json.dumps(record), ex=LIVENESS_TTL_S)
        except redis.RedisError as exc:
            # The broker itself is down: the record expires, which is the truth.
            log.warning("could not publish liveness: %s", exc)

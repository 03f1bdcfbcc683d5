"""Liveness: the worker publishes what it is doing as a Redis key with a TTL.

``dance check`` (the Docker HEALTHCHECK) reads it. The key expires when the worker dies or its event
loop stalls, and says ``ready: false`` while the gate waits for ComfyUI or the worker warms up (with
``warming: true``), so a health check, like every other view, sees the worker as ready only once ComfyUI
is, and warm. It also carries the start-up timeline (worker/startup.py). The same beat renews, while the
worker is ready, what its ComfyUI offers to each queue it consumes (worker/capabilities.py).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import redis
from celery import bootsteps
from celery.worker import state as worker_state

from producer import keys
from worker.capabilities import CapabilityPublisher
from worker.runtime import Runtime

log = logging.getLogger(__name__)

#: How often the record is refreshed, in seconds.
LIVENESS_INTERVAL_S = 5.0
#: Lifetime of the record, in seconds: three missed refreshes mean the worker is gone.
LIVENESS_TTL_S = 15
#: A worker that may consume but has sent no BRPOP for this long is stuck, in seconds. kombu re-sends
#: BRPOP every ``brpop_timeout`` (1 s) while consuming, and drops a silent connection after 26 s.
STALL_S = 60.0
#: Exit code of a worker that found itself connected but no longer consuming.
EXIT_STALLED = 4


def consumption_stalled(c: Any, now: float | None = None) -> bool:
    """The "connected but no longer consuming" state (celery#10205, #8030): the queues are attached
    and the worker has room for a job, yet no BRPOP went out for :data:`STALL_S`.

    Reads kombu 5.7's ``Channel._brpop_sent_at`` (pinned; see pyproject).
    """
    consumer = c.task_consumer
    if consumer is None or not consumer.queues:
        return False  # detached by the gate: not consuming, on purpose
    channel = consumer.channel
    if not channel.qos.can_consume():
        return False  # busy: a full worker sends no BRPOP
    sent_at = getattr(channel, "_brpop_sent_at", None)
    if sent_at is None:
        return False  # nothing sent on this channel yet: it has just (re)connected
    return bool((now if now is not None else time.monotonic()) - sent_at > STALL_S)


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
        "jobs": runtime.registry.job_ids(),
        "ready_after_s": gate.ready_after_s if gate is not None else None,
        "missing": list(gate.verdict.missing) if gate is not None and gate.verdict and not ready else [],
        "warming": bool(gate is not None and gate.warming.is_set()),
        "warmup_error": gate.warmup_error.as_dict() if gate is not None and gate.warmup_error else None,
        "startup": runtime.timeline.as_dict(),
        "updated_at": time.time(),
    }


class Liveness(bootsteps.StartStopStep):
    requires = ("worker.gate:ComfyGate",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.timer_ref: Any = None
        self.capabilities = CapabilityPublisher(Runtime.current(c.app).redis)

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
            self.capabilities.withdraw(c.hostname, list(Runtime.current(c.app).settings.queues))
        except redis.RedisError:
            log.debug("could not delete the liveness and capability keys on shutdown", exc_info=True)

    def publish(self, c: Any) -> None:
        runtime = Runtime.current(c.app)
        record = liveness_record(c, runtime)
        if record["consuming"] and consumption_stalled(c):
            record["consuming"] = False
            log.critical("connected to the broker but no longer consuming (celery#10205); exiting with %d "
                         "so that the supervisor restarts the worker", EXIT_STALLED)
            worker_state.should_stop = EXIT_STALLED
        try:
            runtime.redis.set(keys.worker_liveness(c.hostname), json.dumps(record), ex=LIVENESS_TTL_S)
            if record["ready"]:
                self.capabilities.beat(c.hostname, list(runtime.settings.queues), runtime.capabilities)
        except redis.RedisError as exc:
            # The broker itself is down: the record expires, which is the truth.
            log.warning("could not publish liveness: %s", exc)

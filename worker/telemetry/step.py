"""The telemetry step: publishes the worker's metric snapshot and shows its readiness in Flower.

* A daemon thread publishes a JSON snapshot under ``dance:metrics:<hostname>`` (expiring after
  :data:`SNAPSHOT_TTL_S`) every :data:`PUBLISH_INTERVAL_S`, and at once when readiness changes or a job
  starts or ends: readiness, current jobs, GPU busy time (ComfyUI's /queue, sampled every
  :data:`GPU_SAMPLE_S`), jobs by outcome and code, stage histograms and ComfyUI's VRAM from
  ``/system_stats``. It runs off the event loop: asking ComfyUI may take seconds.
* :meth:`Telemetry.info` adds ``dance_*`` entries to the worker's ``stats`` reply, which Flower shows
  under the worker's "Other" tab: a worker waiting for ComfyUI says so there (and shows no active
  queues under "Queues").
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import redis
from celery import bootsteps

from producer import keys
from producer.errors import DanceError
from worker.comfy_http import ComfyHttp
from worker.runtime import Runtime
from worker.telemetry.metrics import WorkerMetrics

log = logging.getLogger(__name__)

#: How often the snapshot is published, in seconds.
PUBLISH_INTERVAL_S = 5.0
#: How often the thread looks for a change worth publishing at once (readiness, a job started or ended).
TICK_S = 0.25
#: Lifetime of a snapshot, in seconds: a worker gone for this long drops out of /metrics.
SNAPSHOT_TTL_S = 20
#: Timeout of the /system_stats call for VRAM figures, in seconds.
VRAM_TIMEOUT_S = 3.0
#: How often ComfyUI's /queue is sampled for the GPU busy fraction, in seconds.
GPU_SAMPLE_S = 0.5
#: Timeout of one /queue sample, in seconds.
GPU_SAMPLE_TIMEOUT_S = 2.0


def readiness_text(runtime: Runtime, started_at: float) -> tuple[bool, str]:
    gate = runtime.gate
    if gate is not None and gate.ready.is_set():
        after = f" after {gate.ready_after_s:.1f}s" if gate.ready_after_s is not None else ""
        return True, f"ready{after}, consuming {','.join(runtime.settings.queues)}"
    if gate is not None and gate.warming.is_set():
        since = time.monotonic() - (gate.warming_since or started_at)
        return False, f"not ready: warming up (running the workflow once) for {since:.0f}s; no queue consumed"
    if gate is not None and gate.ready_after_s is not None:
        return False, "not ready: ComfyUI stopped answering; queues detached"
    return False, f"not ready: waiting for ComfyUI for {time.monotonic() - started_at:.0f}s; no queue consumed"


def vram(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-device memory figures of a /system_stats answer."""
    return [
        {"device": str(device.get("name") or device.get("type") or "?"),
         "total_bytes": device.get("vram_total"), "free_bytes": device.get("vram_free"),
         "torch_total_bytes": device.get("torch_vram_total"), "torch_free_bytes": device.get("torch_vram_free")}
        for device in stats.get("devices") or [] if isinstance(device, dict)
    ]


class Telemetry(bootsteps.StartStopStep):
    requires = ("worker.gate:ComfyGate",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.runtime = Runtime.current(c.app)
        self.metrics = WorkerMetrics()
        c.app.dance_metrics = self.metrics
        self.hostname: str = c.hostname
        self.started_at = time.monotonic()
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        # Its own client: the gate's probe thread and the jobs use the runtime's; calls here stay short.
        self.http = ComfyHttp(self.runtime.settings.comfyui_url, GPU_SAMPLE_TIMEOUT_S)

    def start(self, c: Any) -> None:
        # Consumer steps restart on every broker reconnect; the thread is started once.
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="dance-telemetry", daemon=True)
            self.thread.start()

    def shutdown(self, c: Any) -> None:
        self.stop_event.set()
        try:
            self.runtime.redis.delete(keys.worker_metrics(self.hostname))
        except redis.RedisError:
            log.debug("could not delete the metrics snapshot on shutdown", exc_info=True)

    def info(self, c: Any) -> dict[str, Any]:
        ready, text = readiness_text(self.runtime, self.started_at)
        return {"dance_ready": ready, "dance_readiness": text, "dance_device": self.runtime.device,
                "dance_current_jobs": self.metrics.current_jobs()}

    def snapshot(self) -> dict[str, Any]:
        ready, text = readiness_text(self.runtime, self.started_at)
        gate = self.runtime.gate
        try:
            devices = vram(self.http.system_stats(timeout_s=VRAM_TIMEOUT_S))
        except DanceError:
            devices = []
        return {
            "hostname": self.hostname, "updated_at": time.time(), "ready": ready, "readiness": text,
            "ready_after_s": gate.ready_after_s if gate is not None else None,
            "warming": bool(gate is not None and gate.warming.is_set()), "startup": self.runtime.timeline.as_dict(),
            "device": self.runtime.device, "queues": list(self.runtime.settings.queues), "vram": devices,
            **self.metrics.snapshot(),
        }

    def publish(self) -> None:
        snapshot = self.snapshot()
        try:
            self.runtime.redis.set(keys.worker_metrics(self.hostname), json.dumps(snapshot), ex=SNAPSHOT_TTL_S)
        except redis.RedisError as exc:
            log.warning("could not publish the metrics snapshot: %s", exc)

    def sample_gpu(self) -> None:
        """Busy means ComfyUI is running a prompt; an unreachable ComfyUI is not busy."""
        try:
            queue = self.http.queue()
        except DanceError:
            self.metrics.gpu_sample(False)
            return
        self.metrics.gpu_sample(bool(queue.get("queue_running")))

    def _loop(self) -> None:
        last_state: tuple[bool, bool, tuple[str, ...]] | None = None
        last_at = last_sample_at = 0.0
        while not self.stop_event.is_set():
            if time.monotonic() - last_sample_at >= GPU_SAMPLE_S:
                self.sample_gpu()
                last_sample_at = time.monotonic()
            gate = self.runtime.gate
            state = (bool(gate is not None and gate.ready.is_set()), bool(gate is not None and gate.warming.is_set()),
                     tuple(self.metrics.current_jobs()))
            due = time.monotonic() - last_at >= PUBLISH_INTERVAL_S
            if due or state != last_state or self.metrics.changed.is_set():
                self.metrics.changed.clear()
                self.publish()
                last_state, last_at = state, time.monotonic()
            self.stop_event.wait(TICK_S)

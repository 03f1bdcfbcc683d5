"""The readiness gate: a consumer bootstep that keeps task queues detached until ComfyUI is ready.

Contract:

* It starts after the ``Tasks`` step built the task consumer and before the event loop consumes, and
  again after every broker reconnect; while ComfyUI is not ready it cancels every task queue, so the
  worker reserves nothing (a message queued meanwhile stays in Redis for a ready worker to take).
* It never blocks the event loop: a probe thread decides readiness, and a hub timer attaches or
  detaches the queues, so every kombu call runs on the loop's thread. Ping, heartbeats, remote control
  and warm shutdown keep working while it waits (docs/celery-on-redis.md#readiness-gate: blocking gates
  hide the worker from ping and Flower and ignore SIGTERM).
* It holds Celery's ``worker_ready`` signal (and the "ready." log line that comes with it) until the
  first time ComfyUI is ready: the consumer's ``init_callback`` is taken away and called on attach.
* If ComfyUI is not ready within ``ready_timeout_s`` it stops the worker with exit code
  :data:`EXIT_NEVER_READY`, having reserved nothing.
* With a warm-up configured (DANCE_WARMUP, worker/warmup.py), "ready" means warm: each time the full probe
  passes while not ready, the probe thread first runs the workflow once, ``warming`` set meanwhile; only
  then do the queues attach. A warm-up that fails because ComfyUI went away counts as ComfyUI not ready
  (it runs again once ComfyUI is back, within ``ready_timeout_s``); any other failure is
  ``worker.warmup_failed`` and stops the worker with :data:`EXIT_WARMUP_FAILED`, having taken no job, so a
  supervisor restarts it as it would a worker whose ComfyUI never got ready. SIGTERM cancels a warm-up.
* Once ready, it keeps probing /system_stats, and repeats the full check every
  ``full_check_interval_s`` (a model file deleted or copied into ComfyUI's folders shows up in both its
  readiness and its published capabilities). When ComfyUI dies or loses a file the workflow needs (two
  failed probes, or a job that saw it die calls :meth:`ComfyGate.mark_down`, so the queues detach before
  the job hands its message back), the worker waits in place, taking nothing, until ComfyUI passes the
  full check again; if that takes longer than ``ready_timeout_s`` it exits with
  :data:`EXIT_NEVER_READY` so a supervisor restarts it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from celery.worker import state as worker_state

from producer.errors import WORKER_WARMUP_FAILED, ComfyUnavailable, DanceError, error
from worker.backoff import Backoff
from worker.orphans import clear_orphans
from worker.readiness import Readiness, probe
from worker.runtime import Runtime
from worker.startup import COMFYUI_ANSWERING, NODES_MODELS_READY, READY, WARM
from worker.warmup import WarmUp

log = logging.getLogger("worker.gate")

#: Process exit code when ComfyUI never became ready.
EXIT_NEVER_READY = 3
#: Process exit code when the warm-up run failed (worker.warmup_failed) for another reason than ComfyUI
#: going away.
EXIT_WARMUP_FAILED = 5
#: How long a stopping worker waits for a cancelled warm-up to stop its prompt and clean up, in seconds.
#: An interrupt lands only when the node running (a model load) ends (15_interrupt_non_progress_node).
WARMUP_STOP_WAIT_S = 60.0
#: How often the event loop applies the probe's verdict, in seconds. It only reads an Event, so a
#: short period costs nothing and keeps the time from "ComfyUI ready" to "queue consumed" small.
TICK_S = 0.05
#: Consecutive failed probes after which a ready ComfyUI counts as down.
FAILS_TO_PAUSE = 2


class ComfyGate(bootsteps.StartStopStep):
    """Detach task queues until ComfyUI passes :func:`worker.readiness.probe`."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.runtime: Runtime = Runtime.current(c.app)
        settings = self.runtime.settings
        self.ready = threading.Event()
        self.started_at = time.monotonic()
        #: When ComfyUI last stopped being ready (first: the start); the readiness timeout counts from it.
        self.waiting_since = self.started_at
        self.ready_after_s: float | None = None
        #: The latest probe that found ComfyUI not ready: what is missing, with codes.
        self.verdict: Readiness | None = None
        self.detached: list[str] = []
        self.held_ready_callback: Callable[[Any], None] | None = None
        self.backoff = Backoff(base_s=settings.ready_poll_min_s, cap_s=settings.ready_poll_max_s)
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.timer_ref: Any = None
        self.consumer = c
        #: The configured warm-up (None: off); ``warming`` is set while it runs.
        self.warmup = WarmUp.build(self.runtime)
        self.warming = threading.Event()
        self.warming_since: float | None = None
        self.warmup_error: DanceError | None = None
        self.runtime.gate = self

    # Bootstep hooks (event-loop thread) ------------------------------------------------------------
    def start(self, c: Any) -> None:
        if not self.ready.is_set():
            self._detach(c)
            if self.held_ready_callback is None and c.init_callback is not None:
                # Holding worker_ready: no receiver and no "ready." line before ComfyUI is.
                self.held_ready_callback, c.init_callback = c.init_callback, None
        self._limit_consumption(c)
        if self.thread is None:
            self.thread = threading.Thread(target=self._probe_loop, name="comfy-gate", daemon=True)
            self.thread.start()
            pipeline = self.runtime.pipeline
            pipeline.hostname, pipeline.ready = c.hostname, self.ready.is_set
            # The janitor's sweep tells this worker's leftovers in ComfyUI by the node name its prompts carry.
            self.runtime.janitor.nodename = c.hostname
            threading.Thread(target=pipeline.run_view, args=(self.stop_event,), name="pipeline-view",
                             daemon=True).start()
        # Reconnects restart consumer steps, so the timer is made anew on every start.
        self.timer_ref = c.timer.call_repeatedly(TICK_S, self._tick, (c,), priority=10)

    def _limit_consumption(self, c: Any) -> None:
        """Let the pipeline decide, before each BRPOP, whether to take one more message.

        kombu's Redis transport issues the next BRPOP only while ``channel.qos.can_consume()`` holds; Celery
        wraps it the same way for ``worker_disable_prefetch``. Done on every start: a reconnect makes a new
        channel.
        """
        qos = c.task_consumer.channel.qos
        original = qos.can_consume
        admits = self.runtime.pipeline.admits

        def can_consume() -> bool:
            return bool(original()) and admits()

        qos.can_consume = can_consume

    def stop(self, c: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None

    def shutdown(self, c: Any) -> None:
        self.stop_event.set()  # also cancels a running warm-up
        self.stop(c)
        if self.warming.is_set() and self.thread is not None:
            # Let the cancelled warm-up stop its prompt and delete its files before the process exits.
            self.thread.join(WARMUP_STOP_WAIT_S)

    # Called by the task thread ----------------------------------------------------------------------
    def mark_down(self) -> None:
        """ComfyUI died under a running job: detach now, before the job requeues its message.

        ``call_soon`` is FIFO on the hub, so the detach runs before the job's reject callback; without
        it the worker re-consumed its own rejected message 82 times in 0.9 s
        (docs/celery-on-redis.md#reject-with-requeue-goes-to-the-back).
        """
        self._lost()
        self.consumer.call_soon(self._tick, self.consumer)

    def _lost(self) -> None:
        if self.ready.is_set():
            self.waiting_since = time.monotonic()
            self.ready.clear()

    # Probe thread ------------------------------------------------------------------------------------
    def _probe_loop(self) -> None:
        settings = self.runtime.settings
        attempt, fails = 0, 0
        next_report = self.started_at + settings.ready_log_interval_s
        next_full = 0.0
        while not self.stop_event.is_set():
            # Once ready, the cheap probe runs between full ones; a failed full check is repeated (not
            # followed by a cheap one that passes), so a model file gone from ComfyUI pauses consumption.
            full = not self.ready.is_set() or fails > 0 or time.monotonic() >= next_full
            verdict = probe(self.runtime.http, self.runtime.workflow, settings.require_gpu, full=full)
            if full and verdict.ready:
                next_full = time.monotonic() + settings.full_check_interval_s
            if verdict.answering:
                self.runtime.timeline.mark(COMFYUI_ANSWERING)
            if verdict.ready:
                verdict = self._on_ready(verdict)
            if self.stop_event.is_set():
                return
            if verdict.ready:
                attempt, fails = 0, 0
            else:
                fails += 1
                if self.ready.is_set() and fails >= FAILS_TO_PAUSE:
                    log.warning("ComfyUI no longer ready (%s); pausing consumption", "; ".join(verdict.missing))
                    self._lost()
                    next_report = time.monotonic() + settings.ready_log_interval_s
                if not self.ready.is_set():
                    self.verdict = verdict
                    next_report = self._report_waiting(verdict, next_report)
                    if self._past_deadline(verdict):
                        return
            self.stop_event.wait(self._pause_s(verdict, attempt))
            attempt += 1

    def _pause_s(self, verdict: Readiness, attempt: int) -> float:
        """How long the probe thread waits before its next probe."""
        settings = self.runtime.settings
        if self.ready.is_set():
            return settings.ready_poll_max_s
        if not verdict.answering:
            # Nothing listens yet: a refused connect never reaches ComfyUI, so polling fast costs it
            # nothing and the first 200 is seen within ready_poll_min_s.
            return settings.ready_poll_min_s
        return self.backoff.delay_s(attempt)  # it answers but lacks something: /object_info is heavy

    def _on_ready(self, verdict: Readiness) -> Readiness:
        """The probe passed: warm up if need be, then mark ready; returns the verdict that stands."""
        self.runtime.device = verdict.device
        if verdict.capabilities is not None and verdict.capabilities != self.runtime.capabilities:
            # Only a full check reads /object_info; an unchanged record keeps its object, so the liveness
            # beat does not serialize and write it again (worker/capabilities.py).
            self.runtime.capabilities = verdict.capabilities
        if not self.ready.is_set():
            # Ready anew means a ComfyUI that may have restarted as another version: learn what it can do
            # (targeted interrupts) before anything stops a prompt.
            self.runtime.http.learn_version(verdict.stats or {})
            clear_orphans(self.runtime.http, self.consumer.hostname)
            self.runtime.timeline.mark(NODES_MODELS_READY)
            failed = self._warm_up()
            if failed is not None:
                return failed
        if self.ready_after_s is None:
            self.ready_after_s = time.monotonic() - self.started_at
            log.info("ComfyUI ready after %.2fs (device: %s); taking tasks", self.ready_after_s, verdict.device)
        elif not self.ready.is_set():
            log.info("ComfyUI ready again (device: %s); resuming consumption", verdict.device)
        self.ready.set()
        return verdict

    def _warm_up(self) -> Readiness | None:
        """Run the warm-up, if one is configured; None once warm, else the not-ready verdict it leaves."""
        if self.warmup is None:
            return None
        log.info("ComfyUI has every node and model; warming up: running the workflow once (%s, timeout %.0fs) "
                 "before taking jobs", self.warmup.describe(), self.runtime.settings.warmup_timeout_s)
        self.warming_since = time.monotonic()
        self.warming.set()
        try:
            took_s = self.warmup.run(self.consumer.hostname, self.stop_event)
        except DanceError as exc:
            return self._warmup_failed(exc)
        finally:
            self.warming.clear()
        self.warmup_error = None
        self.runtime.timeline.mark(WARM)
        log.info("warm after a %.2fs warm-up run", took_s)
        return None

    def _warmup_failed(self, exc: DanceError) -> Readiness:
        failure = error(WORKER_WARMUP_FAILED, f"the warm-up run failed: {exc}", cause=exc.code,
                        cause_details=exc.details)
        self.warmup_error = failure
        if self.stop_event.is_set():
            log.info("warm-up stopped: the worker is shutting down")
        elif isinstance(exc, ComfyUnavailable):
            log.warning("%s; warming up again once ComfyUI is ready", failure)
        else:
            log.error("%s; exiting with code %d without taking a job", failure, EXIT_WARMUP_FAILED)
            # As for a ComfyUI never ready: the event loop raises WorkerShutdown on its next turn.
            worker_state.should_stop = EXIT_WARMUP_FAILED
            self.stop_event.set()
        return Readiness(False, (str(failure),), answering=True, codes=(WORKER_WARMUP_FAILED,))

    def _report_waiting(self, verdict: Readiness, next_report: float) -> float:
        now = time.monotonic()
        if now < next_report:
            return next_report
        log.info(
            "waiting for ComfyUI for %.0fs (timeout %.0fs); still missing: %s",
            now - self.waiting_since, self.runtime.settings.ready_timeout_s, "; ".join(verdict.missing),
        )
        return now + self.runtime.settings.ready_log_interval_s

    def _past_deadline(self, verdict: Readiness) -> bool:
        timeout_s = self.runtime.settings.ready_timeout_s
        if time.monotonic() - self.waiting_since < timeout_s:
            return False
        code = verdict.codes[0] if verdict.codes else "comfyui.unreachable"
        log.error("[%s] ComfyUI was not ready within COMFYUI_READY_TIMEOUT_S=%.0fs (missing: %s); "
                  "exiting with code %d", code, timeout_s, "; ".join(verdict.missing), EXIT_NEVER_READY)
        # The event loop raises WorkerShutdown(EXIT_NEVER_READY) on its next turn; the queues are
        # detached, so nothing is reserved.
        worker_state.should_stop = EXIT_NEVER_READY
        return True

    # Event-loop thread -------------------------------------------------------------------------------
    def _tick(self, c: Any) -> None:
        if c.task_consumer is None:
            return
        if self.ready.is_set() and self.detached:
            self._attach(c)
        elif not self.ready.is_set() and not self.detached:
            self._detach(c)

    def _detach(self, c: Any) -> None:
        names = [queue.name for queue in c.task_consumer.queues]
        for name in names:
            c.cancel_task_queue(name)
        self.detached = sorted(set(self.detached) | set(names))
        log.info("task queues %s detached until ComfyUI is ready", self.detached)

    def _attach(self, c: Any) -> None:
        for name in self.detached:
            # celery#10352 (5.7): add_task_queue re-selects a queue cancelled earlier.
            c.add_task_queue(name)
        log.info("task queues %s attached", self.detached)
        self.runtime.timeline.mark(READY)
        self.detached = []
        callback, self.held_ready_callback = self.held_ready_callback, None
        if callback is not None:
            callback(c)  # sends worker_ready and logs "<hostname> ready."

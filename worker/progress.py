"""Job progress, published where producers and Flower can see it.

``update_state`` writes the PROGRESS meta to the result backend, which ``handle.progress()`` and
``dance status`` read; it never reaches Flower
(docs/celery-on-redis.md#progress-never-reaches-flower-through-update_state). A ``task-progress`` event
does, but Flower only shows its ``result`` field, so the progress is also put there as text.

The writes go out on the worker's state-write thread (:class:`StateWriter`), in the order they were made: each
costs three Redis round trips (Celery reads the state before it overwrites it, writes it, then the event is
published), and on the job's thread a job's six writes before its outputs are stored cost it about 15 ms
(BENCHMARKS.md, the overhead section). The run waits for the last write (:meth:`ProgressReporter.close`)
before its outcome is written, so no STARTED or PROGRESS ever lands after a SUCCESS, FAILURE, REVOKED or
REQUEUED.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import redis
from celery import states
from celery.exceptions import BackendError
from kombu.exceptions import OperationalError

from producer.progressbar import describe_progress

log = logging.getLogger(__name__)

#: Shortest pause between two published progress updates of one job, in seconds.
MIN_INTERVAL_S = 0.5
PROGRESS_STATE = "PROGRESS"
#: What a state write raises when the broker is away: a Redis error, kombu's, or Celery's BackendError once
#: its own retries of the write (result_backend_always_retry) are spent.
STATE_WRITE_ERRORS = (redis.RedisError, OperationalError, BackendError)


#: One write: a state write and, for progress, its event.
Write = Callable[[], None]


def state_write_thread() -> Executor:
    """The worker's one thread for every job's state writes (Runtime.state_writes). One thread, so writes
    keep their order; one for all jobs, because Celery gives each thread a result backend of its own, and a
    thread per job paid for a new backend and connection each time (6.3 ms against 0.8 ms for a write on a
    warm thread, measured)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-writes")


class StateWriter:
    """Runs one job's state writes in order on ``executor`` (None: on the caller's thread, at once)."""

    def __init__(self, task: Any, job_id: str, executor: Executor | None) -> None:
        self.task, self.job_id, self.executor = task, job_id, executor
        #: The job's Celery request, captured on the job's thread: the writes run under it, as they would there.
        self.request = vars(task.request) if task is not None else {}
        self._pending: list[Future[None]] = []

    def submit(self, write: Write) -> None:
        if self.executor is None:
            self._write(write)
        else:
            self._pending.append(self.executor.submit(self._write, write))

    def close(self) -> None:
        """Wait until every submitted write is done (or skipped); raise what a write raised other than a broker
        error (a bug), as it did when written on the job's thread."""
        pending, self._pending = self._pending, []
        futures.wait(pending)  # all of them, even after a failed one: none may land after the job's outcome
        for future in pending:
            future.result()

    def _write(self, write: Write) -> None:
        # update_state and send_event read the job's id and hostname from the task's request, a
        # thread-local stack: the write runs under a copy of the job's own.
        if self.executor is not None:
            self.task.push_request(**self.request)
        try:
            write()
        except STATE_WRITE_ERRORS as exc:
            # Progress is a view; a broker hiccup must not fail the job it describes. BackendError is what
            # Celery raises once its own retries of the write (result_backend_always_retry) are spent.
            log.warning("job %s: state not published: %s", self.job_id, exc)
        finally:
            if self.executor is not None:
                self.task.pop_request()


class ProgressReporter:
    def __init__(self, task: Any, job_id: str, writes: Executor | None = None) -> None:
        self.task = task
        self.job_id = job_id
        #: Where the writes are made: the worker's state-write thread, or (None) the caller's thread.
        self.writer = StateWriter(task, job_id, writes)
        self.stage = "starting"
        #: node id → class_type of the prompt being run, so progress names the node's kind.
        self.node_classes: dict[str, str] = {}
        #: Nodes ComfyUI started executing, in order; all but the last are done (cached nodes never start).
        self._started_nodes: dict[str, None] = {}
        self._last_sent = 0.0
        #: The newest update the throttle held back; flush() sends it once the interval has passed.
        self._pending: dict[str, Any] | None = None

    def started(self, hostname: str) -> None:
        """Mark the job STARTED once this run owns it (worker/app.py turns Celery's own tracking off)."""
        meta = {"pid": os.getpid(), "hostname": hostname}
        self.writer.submit(lambda: self.task.update_state(state=states.STARTED, meta=meta))

    def close(self) -> None:
        """Wait until every STARTED and PROGRESS write of this run is done: call before its outcome is written."""
        self.writer.close()

    def stage_changed(self, stage: str) -> None:
        self.stage = stage
        self._publish({"node": None, "value": 0, "max": 0, "percent": 0.0}, force=True)

    def comfy(self, update: dict[str, Any]) -> None:
        """A progress or executing update from ComfyUI (see worker.prompt_run.Tracker)."""
        # Throttled like everything but stage changes: the dance graph has some thirty nodes, most of them
        # done in milliseconds, and a publish per node would cost more than the nodes themselves.
        node = str(update.get("node"))
        if node in self.node_classes:
            self._started_nodes.setdefault(node)
        # The node counts let a client weigh progress by nodes, as the Comfy API v2's Progress does.
        counts = {"nodes_done": max(0, len(self._started_nodes) - 1), "nodes_total": len(self.node_classes)}
        self._publish({**update, **counts, "class_type": self.node_classes.get(node)}, force=False)

    def flush(self) -> None:
        """Send the update the throttle held back, if its interval has passed (called while waiting)."""
        if self._pending is not None:
            self._publish(self._pending, force=False)

    def _publish(self, update: dict[str, Any], force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_sent < MIN_INTERVAL_S:
            self._pending = update
            return
        self._pending = None
        self._last_sent = now
        meta = {"job_id": self.job_id, "stage": self.stage, **update}

        def write() -> None:
            self.task.update_state(state=PROGRESS_STATE, meta=meta)
            self.task.send_event("task-progress", result=describe_progress(meta), **meta)

        self.writer.submit(write)

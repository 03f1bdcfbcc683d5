"""Job progress, published where producers and Flower can see it.

``update_state`` writes the PROGRESS meta to the result backend, which ``handle.progress()`` and
``dance status`` read; it never reaches Flower
(docs/celery-on-redis.md#progress-never-reaches-flower-through-update_state). A ``task-progress`` event
does, but Flower only shows its ``result`` field, so the progress is also put there as text.
"""

from __future__ import annotations

import logging
import os
import time
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


class ProgressReporter:
    def __init__(self, task: Any, job_id: str) -> None:
        self.task = task
        self.job_id = job_id
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
        try:
            self.task.update_state(state=states.STARTED, meta={"pid": os.getpid(), "hostname": hostname})
        except STATE_WRITE_ERRORS as exc:
            log.warning("job %s: STARTED not recorded: %s", self.job_id, exc)

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
        try:
            self.task.update_state(state=PROGRESS_STATE, meta=meta)
            self.task.send_event("task-progress", result=describe_progress(meta), **meta)
        except STATE_WRITE_ERRORS as exc:
            # Progress is a view; a broker hiccup must not fail the job it describes. BackendError is what
            # Celery raises once its own retries of the write (result_backend_always_retry) are spent.
            log.warning("job %s: progress not published: %s", self.job_id, exc)

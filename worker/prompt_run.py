"""Run one prompt on ComfyUI to an outcome, whatever the WebSocket does.

The WebSocket gives progress and the fast "done" signal; ``/history/<prompt_id>`` is the authority on
the outcome and the outputs (it also lists cached outputs: 03b_basic_resubmit_identical.json). A drop of
the socket never hangs a job: we reconnect with backoff and poll the history meanwhile, and even a
connected socket is double-checked against the history now and then, because a missed completion
event hung the original endpoint's jobs forever.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from producer.errors import (
    COMFY_EXECUTION_ERROR,
    COMFY_INTERRUPTED,
    COMFY_PROMPT_LOST,
    COMFY_PROTOCOL,
    COMFY_QUEUE_WAIT,
    JOB_CANCELLED,
    JOB_DEADLINE,
    ComfyUnavailable,
    error,
)
from worker.backoff import Backoff
from worker.comfy_http import ComfyHttp, OutputFile
from worker.comfy_ws import Event, EventSocket
from worker.prompt_stop import RUNNING, queue_state, stop_prompt

log = logging.getLogger(__name__)

#: Longest a single socket read blocks, in seconds; bounds how fast a cancel or deadline is seen.
RECV_SLICE_S = 0.25
#: How often the queue and the history are checked, whatever the socket says, in seconds: bounds how
#: long a missed completion, a missed start or a prompt cleared from the queue goes unnoticed.
SAFETY_POLL_S = 2.0
#: How often the history is polled while the socket is down, in seconds.
HISTORY_FALLBACK_POLL_S = 0.5
#: Reconnect delays after a WebSocket drop.
RECONNECT_BACKOFF = Backoff(base_s=0.2, cap_s=5.0)
#: Output keys whose items are files; anything else in ``outputs`` (``animated: [true]``, text) is skipped.
_TEMP_TYPE = "temp"

#: Frames of our prompt that only come once it executes.
_START_EVENTS = frozenset({"execution_start", "execution_cached", "executing", "progress", "executed"})

ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class PromptOutcome:
    prompt_id: str
    outputs: list[OutputFile]
    cached_nodes: tuple[str, ...]
    execute_s: float


@dataclass
class Tracker:
    """What the socket told us about our prompt so far."""

    prompt_id: str
    done: bool = False
    started_at: float | None = None
    node: str | None = None
    cached_nodes: list[str] = field(default_factory=list)

    def feed(self, event: Event, on_progress: ProgressCallback) -> None:
        data = event.data
        if data.get("prompt_id") not in (None, self.prompt_id):
            return  # another client's prompt; ComfyUI only targets ours, but status frames are shared
        if event.type in _START_EVENTS and self.started_at is None:
            # execution_start, or what follows it when a reconnect missed it (19_two_clients.A2_reconnect).
            self.started_at = time.monotonic()
        if event.type == "execution_cached" and data.get("prompt_id") == self.prompt_id:
            self.cached_nodes = [str(n) for n in data.get("nodes") or []]
        elif event.type == "executing":
            self._executing(data, on_progress)
        elif event.type == "progress" and data.get("prompt_id") == self.prompt_id:
            value, maximum = int(data.get("value") or 0), int(data.get("max") or 0)
            percent = round(100.0 * value / maximum, 1) if maximum else 0.0
            on_progress({"node": str(data.get("node")), "value": value, "max": maximum, "percent": percent})

    def _executing(self, data: dict[str, Any], on_progress: ProgressCallback) -> None:
        node = data.get("node")
        if node is None:
            # The "done" signal: it follows success, errors and interrupts alike, after the history
            # entry has been written (03_basic.ws.jsonl).
            if data.get("prompt_id") == self.prompt_id:
                self.done = True
            return
        # A reconnect replays the current node without prompt_id (19_two_clients.A2_reconnect).
        self.node = str(node)
        on_progress({"node": self.node, "value": 0, "max": 0, "percent": 0.0})


class PromptRun:
    """Drive one submitted prompt to its outcome.

    The prompt may first wait in ComfyUI's queue behind another (pipelining): that wait is bounded by
    ``queue_wait_s``, and the job's own ``deadline_s`` counts from the moment the prompt starts executing
    (``execution_start`` on the socket, or the prompt seen running in GET /queue when the socket missed
    it). A prompt that leaves the queue without an entry in the history (POST /queue clear) is lost.
    """

    def __init__(
        self, http: ComfyHttp, sock: EventSocket, prompt_id: str, deadline_s: float,
        cancel: threading.Event, on_progress: ProgressCallback, on_start: Callable[[], None] = lambda: None,
        on_tick: Callable[[], None] = lambda: None, queue_wait_s: float = math.inf,
    ) -> None:
        self.http, self.sock, self.prompt_id = http, sock, prompt_id
        self.deadline_s, self.queue_wait_s = deadline_s, queue_wait_s
        self.cancel, self.on_progress = cancel, on_progress
        #: Called once when ComfyUI starts running the prompt (it may first wait in ComfyUI's queue).
        self.on_start = on_start
        #: Called on every turn of the wait (at least every RECV_SLICE_S): lets held-back progress out.
        self.on_tick = on_tick
        self.tracker = Tracker(prompt_id)
        self.submitted_at = time.monotonic()
        #: Whether :meth:`stop_prompt` already ran: a failure path stops the prompt once.
        self.stopped = False
        self._drops = 0
        self._next_check = self.submitted_at + SAFETY_POLL_S

    @property
    def limit(self) -> float:
        """The monotonic time the wait may last until: the queue-wait bound, then the execution deadline."""
        if self.tracker.started_at is None:
            return self.submitted_at + self.queue_wait_s
        return self.tracker.started_at + self.deadline_s

    def wait(self) -> PromptOutcome:
        entry = None
        while entry is None:
            self._check_stop()
            self.on_tick()
            if self.sock.connected:
                self._read_socket()
            else:
                entry = self._reconnect_or_poll()
            if entry is None and (self.tracker.done or time.monotonic() >= self._next_check):
                entry = self._check_comfyui()
        started = self.tracker.started_at or self.submitted_at
        return PromptOutcome(
            prompt_id=self.prompt_id,
            outputs=interpret_history(self.prompt_id, entry),
            cached_nodes=tuple(self.tracker.cached_nodes),
            execute_s=time.monotonic() - started,
        )

    def _check_stop(self) -> None:
        if self.cancel.is_set():
            self.stop_prompt()
            raise error(JOB_CANCELLED, "the job was cancelled while ComfyUI ran it", prompt_id=self.prompt_id)
        if time.monotonic() < self.limit:
            return
        self.stop_prompt()
        if self.tracker.started_at is None:
            raise error(COMFY_QUEUE_WAIT, f"the prompt waited {self.queue_wait_s:g}s in ComfyUI's queue without "
                        "starting; it was dropped", prompt_id=self.prompt_id, queue_wait_s=self.queue_wait_s)
        raise error(
            JOB_DEADLINE, "the job ran past its execution deadline; its prompt was interrupted",
            prompt_id=self.prompt_id, deadline_s=self.deadline_s,
        )

    def _started(self) -> None:
        if self.tracker.started_at is None:
            self.tracker.started_at = time.monotonic()
        self.on_start()

    def _read_socket(self) -> None:
        slice_s = min(RECV_SLICE_S, max(self.limit - time.monotonic(), 0.0))
        try:
            event = self.sock.recv(slice_s)
        except ComfyUnavailable:
            self._drops += 1
            log.warning("ComfyUI WebSocket dropped during prompt %s; polling /history", self.prompt_id)
            self._next_check = time.monotonic()
            return
        if event is not None:
            waiting = self.tracker.started_at is None
            self.tracker.feed(event, self.on_progress)
            if waiting and self.tracker.started_at is not None:
                self.on_start()

    def _reconnect_or_poll(self) -> dict[str, Any] | None:
        # The HTTP side tells a dead ComfyUI (refused: raise at once, the job goes back to the
        # queue) from a dropped socket (history answers: keep polling while reconnecting).
        entry = self.http.history(self.prompt_id)
        if entry is not None and _complete(entry):
            return entry
        try:
            self.sock.connect()
            log.info("ComfyUI WebSocket reconnected for prompt %s", self.prompt_id)
        except ComfyUnavailable:
            pause = min(RECONNECT_BACKOFF.delay_s(self._drops), HISTORY_FALLBACK_POLL_S)
            self._drops += 1
            self.cancel.wait(max(0.0, min(pause, self.limit - time.monotonic())))
        return None

    def _check_comfyui(self) -> dict[str, Any] | None:
        """The complete history entry, or None while the prompt waits or runs; notices a start the socket
        missed and a prompt that left the queue without running."""
        self._next_check = time.monotonic() + SAFETY_POLL_S
        # The queue is read before the history: ComfyUI moves a finished prompt from queue_running to the
        # history under one lock, so a prompt in neither, in this order, will never reach the history.
        state = None if self.tracker.done else queue_state(self.http.queue(), self.prompt_id)
        entry = self.http.history(self.prompt_id)
        if entry is not None and _complete(entry):
            return entry
        if self.tracker.done:
            # "done" arrived but no entry: the history was cleared behind our back.
            raise error(COMFY_PROTOCOL, "ComfyUI finished the prompt but kept no history for it",
                        prompt_id=self.prompt_id)
        if state == RUNNING and self.tracker.started_at is None:
            log.info("prompt %s seen running in ComfyUI's queue; its deadline starts now", self.prompt_id)
            self._started()
        elif state is None:
            self.stopped = True  # nothing left in ComfyUI to stop
            raise error(COMFY_PROMPT_LOST, "the prompt left ComfyUI's queue without running (was the queue "
                        "cleared?)", prompt_id=self.prompt_id)
        return None

    def stop_prompt(self) -> None:
        """Drop our prompt from the queue or interrupt it, never someone else's (worker/prompt_stop.py);
        once per run, best effort."""
        if not self.stopped:
            self.stopped = True
            stop_prompt(self.http, self.prompt_id)


def _complete(entry: dict[str, Any]) -> bool:
    status = entry.get("status")
    # An entry exists only once the prompt ended; the status block is there in 0.3.39.
    return isinstance(status, dict) and status.get("status_str") in ("success", "error")


def interpret_history(prompt_id: str, entry: dict[str, Any]) -> list[OutputFile]:
    """Outputs of a successful history entry, or the permanent error a failed one carries."""
    status = entry.get("status") or {}
    messages = status.get("messages") or []
    if status.get("status_str") != "success":
        for kind, data in reversed(messages):
            if kind == "execution_error":
                raise error(
                    COMFY_EXECUTION_ERROR,
                    f"node {data.get('node_id')} ({data.get('node_type')}) raised "
                    f"{data.get('exception_type')}: {data.get('exception_message', '').strip()}",
                    prompt_id=prompt_id, node_id=data.get("node_id"), node_type=data.get("node_type"),
                    exception_type=data.get("exception_type"),
                    exception_message=data.get("exception_message"),
                    traceback=(data.get("traceback") or [])[-3:],
                )
            if kind == "execution_interrupted":
                raise error(COMFY_INTERRUPTED, "ComfyUI interrupted the prompt (not this job's doing)",
                            prompt_id=prompt_id, node_id=data.get("node_id"))
        raise error(COMFY_EXECUTION_ERROR, "ComfyUI reports the prompt failed", prompt_id=prompt_id)
    return collect_outputs(entry.get("outputs") or {})


def collect_outputs(outputs: dict[str, Any]) -> list[OutputFile]:
    """Saved files of every output node: ``images``, VHS ``gifs``, videos...; ``temp`` previews skipped."""
    files: list[OutputFile] = []
    for node_id, node_output in outputs.items():
        if not isinstance(node_output, dict):
            continue
        for key, items in node_output.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict) or "filename" not in item or item.get("type") == _TEMP_TYPE:
                    continue
                files.append(OutputFile(
                    node_id=str(node_id), key=str(key), filename=str(item["filename"]),
                    subfolder=str(item.get("subfolder") or ""), type=str(item.get("type") or "output"),
                    format=item.get("format"),
                ))
    return files

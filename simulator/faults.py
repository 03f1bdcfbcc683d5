"""Test hooks that are not part of ComfyUI: armed faults and a summary of what the simulator saw.

Faults are armed with POST /__sim__/faults and are one-shot unless ``"sticky": true``:

- ``{"hold": true, "hold_class": "WanVideoSamplerv2"}``: that node blocks until POST /__sim__/release,
  right after its first ``progress`` frame (for a class that never reports progress: right after its
  ``executing`` frame). ``"hold_at_progress": "2/4"`` holds after the progress frame with value 2 and max 4
  instead of the first one. ``"hold_node": "11"`` holds the node with that id instead. A release that comes
  first lets the next hold pass at once. Sticky holds stop every run of the class once. POST /interrupt
  also ends a hold (without using up a release): the interrupt then lands at the next progress tick or
  node start, as after a long step.
- ``{"fail_class": C, "exception_type": "torch.OutOfMemoryError", "exception_message": M}``: node class C
  raises that exception when it starts, giving a normal ``execution_error``.
- ``{"drop_websockets_at": EVENT}``: every websocket is cut (no close frame) when the executor first
  emits EVENT (``progress``, ``executing``, ``executed``, ``execution_start``...); the prompt keeps running.
  ``EVENT:Class`` (``progress:WanVideoSamplerv2``) waits for that event from that node class.
- ``{"crash_at": EVENT}``: the process dies with ``os._exit(137)`` at EVENT (same forms), as a SIGKILL
  would leave it.
- ``{"exec_s": S}``: the sampler's simulated duration from now on.
- ``{"view_bytes_per_s": R}``: GET /view streams files at R bytes per second (0: unthrottled), so the
  benchmarks can give output transfers a duration.
- ``{"pad_output_bytes": N}``: VHS_VideoCombine appends an MP4 ``free`` box of N bytes to its video
  (sparse on disk), for transfers of large outputs.
- ``{"slow_route": "/queue", "slow_s": S}``: the next answer to that path (or a path under it, with or
  without the /api prefix) leaves S seconds late; the request itself is handled at once, as a ComfyUI
  whose event loop is stalled after the fact would. Sticky: every answer.
- ``{"clear": true}``: disarm everything.

GET /__sim__/state summarises what the simulator saw. Its ``runs`` hold one record per prompt the executor
ran, however the run ended (success, execution error, interrupt): ``[prompt_id, started_at, ended_at,
job_id, worker_mark]``, times in epoch seconds, the last two from the prompt's ``extra_data``
(``dance_job_id``, ``dance_worker``) or null; two records of one job that overlap in time are two GPUs
running it at once. Its ``model_loads`` list the model files read from disk, in order (simulator/model_loads.py:
the first use of each after start costs ``--model-load-s``). GET /__sim__/last_prompt returns the last POST /prompt
body exactly as it arrived (before validation coerced ``"512"`` to ``512``), under ``body``. POST /__sim__/models
``{"missing": [file, ...]}`` takes those model files out of their folders from then on and puts every other
one back (simulator/catalog.py), as an operator's copy or delete does on a real server.
"""

from __future__ import annotations

import builtins
import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: The class a bare ``{"hold": true}`` holds: the dance workflow's heavy node.
DEFAULT_HOLD_CLASS = "WanVideoSamplerv2"
#: Exit status of a crash, the one a SIGKILL'd process reports to a shell.
CRASH_EXIT_STATUS = 137
#: Keys POST /__sim__/faults accepts.
FAULT_KEYS = frozenset(
    {
        "hold",
        "hold_class",
        "hold_node",
        "hold_at_progress",
        "fail_class",
        "exception_type",
        "exception_message",
        "drop_websockets_at",
        "crash_at",
        "exec_s",
        "view_bytes_per_s",
        "pad_output_bytes",
        "slow_route",
        "slow_s",
        "sticky",
        "clear",
    }
)


Run = tuple[str, float, float, str | None, str | None]


class FaultSpecError(ValueError):
    """A POST /__sim__/faults body the simulator does not understand (answered with 400)."""


@dataclass
class SimState:
    """What GET /__sim__/state reports (plus ``running``, ``held`` and the registered ``sockets``)."""

    #: POST /prompt requests that reached the handler, accepted or not.
    prompts_received: int = 0
    #: Ids of prompts whose execution ended (success, error or interrupt), in order.
    executed: list[str] = field(default_factory=list)
    #: POST /interrupt requests.
    interrupts: int = 0
    #: Names (with subfolder) that POST /upload/image answered with.
    uploads: list[str] = field(default_factory=list)
    #: Cache resets done for POST /free {"free_memory": true}; the worker applies them between prompts.
    memory_frees: int = 0
    #: One record per prompt the executor ran, however it ended (success, execution error, interrupt):
    #: ``(prompt_id, started_at, ended_at, job_id, worker_mark)``. The times are epoch seconds, the GPU's
    #: busy span; job_id and worker_mark are the ``dance_job_id`` and ``dance_worker`` of the prompt's
    #: extra_data, or None. Prompts deleted from the queue never ran and have none; a crash loses the
    #: record of the prompt it killed.
    runs: list[Run] = field(default_factory=list)
    #: The last POST /prompt body as it arrived, before validation coerced any value (GET /__sim__/last_prompt).
    last_prompt_body: Any = None


class Faults:
    """Armed faults, shared by the HTTP handlers and the executor thread."""

    def __init__(self, exec_s: float) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition()
        self._release_pending = False
        self._armed: dict[str, dict[str, Any]] = {}
        self.exec_s = exec_s
        self.view_bytes_per_s = 0.0
        self.pad_output_bytes = 0
        self.held = False
        self.state = SimState()

    def arm(self, spec: Any) -> dict[str, Any]:
        if not isinstance(spec, dict) or not set(spec) <= FAULT_KEYS:
            raise FaultSpecError(f"expected a JSON object with keys among {sorted(FAULT_KEYS)}")
        sticky = bool(spec.get("sticky", False))
        with self._lock:
            if spec.get("clear"):
                self._armed.clear()
            if "exec_s" in spec:
                self.exec_s = float(spec["exec_s"])
            if "view_bytes_per_s" in spec:
                self.view_bytes_per_s = float(spec["view_bytes_per_s"])
            if "pad_output_bytes" in spec:
                self.pad_output_bytes = int(spec["pad_output_bytes"])
            if spec.get("hold"):
                self._armed["hold"] = {
                    "class": None if "hold_node" in spec else spec.get("hold_class", DEFAULT_HOLD_CLASS),
                    "node": spec.get("hold_node"),
                    "progress": spec.get("hold_at_progress"),
                    "sticky": sticky,
                }
            if "fail_class" in spec:
                self._armed["fail"] = {
                    "class": spec["fail_class"],
                    "sticky": sticky,
                    "type": spec.get("exception_type", "RuntimeError"),
                    "message": spec.get("exception_message", "simulated failure"),
                }
            if "slow_route" in spec:
                self._armed["slow"] = {"route": str(spec["slow_route"]).rstrip("/"),
                                       "seconds": float(spec.get("slow_s", 1.0)), "sticky": sticky}
            for key in ("drop_websockets_at", "crash_at"):
                if key in spec:
                    self._armed[key] = {"event": spec[key], "sticky": sticky}
            return self.describe()

    def describe(self) -> dict[str, Any]:
        return {"armed": {name: dict(value) for name, value in self._armed.items()}, "exec_s": self.exec_s}

    def _take(self, name: str) -> dict[str, Any] | None:
        fault = self._armed.get(name)
        if fault is not None and not fault["sticky"]:
            del self._armed[name]
        return fault

    def at_event(self, event: str, class_type: str | None) -> tuple[bool, bool]:
        """(drop every socket now, crash now) for an event the executor is about to emit."""
        names = {event, f"{event}:{class_type}"}
        with self._lock:
            drop = self._armed.get("drop_websockets_at", {}).get("event") in names
            crash = self._armed.get("crash_at", {}).get("event") in names
            if drop:
                self._take("drop_websockets_at")
            return drop, crash

    def answer_delay_s(self, path: str) -> float:
        """How late the answer to a request for ``path`` leaves (0: on time); uses up a one-shot fault."""
        route = path[len("/api"):] if path.startswith("/api/") else path
        with self._lock:
            fault = self._armed.get("slow")
            if fault is None or not (route == fault["route"] or route.startswith(fault["route"] + "/")):
                return 0.0
            self._take("slow")
            return float(fault["seconds"])

    def failure_for(self, class_type: str) -> Exception | None:
        with self._lock:
            fault = self._armed.get("fail")
            if fault is None or fault["class"] != class_type:
                return None
            self._take("fail")
        return make_exception(str(fault["type"]), str(fault["message"]))

    def wants_hold(self, class_type: str, node_id: str, progress: str | None = None) -> bool:
        """Whether to hold now; ``progress`` is the "value/max" just sent (None: the node is starting)."""
        with self._lock:
            fault = self._armed.get("hold")
            if fault is None or (fault["class"], fault["node"]) not in ((class_type, None), (None, node_id)):
                return False
            if fault["progress"] is not None and progress != fault["progress"]:
                return False
            self._take("hold")
            return True

    def hold(self, interrupted: Callable[[], bool]) -> None:
        """Block until released (consuming the release) or until an interrupt is pending.

        A hold stands for a long GPU step: an interrupt ends it, and the node's next progress tick (or the
        next node's start) then raises, as it would after a real step (14, 15).
        """
        with self._wake:
            self.held = True
            while not self._release_pending and not interrupted():
                self._wake.wait()
            self._release_pending = False
            self.held = False

    def release(self) -> None:
        with self._wake:
            self._release_pending = True
            self._wake.notify_all()

    def interrupt_arrived(self) -> None:
        """Wake a hold so it can see the interrupt flag (called when POST /interrupt sets it)."""
        with self._wake:
            self._wake.notify_all()

    def record(
        self,
        *,
        interrupt: bool = False,
        upload: str | None = None,
        executed: str | None = None,
        memory_free: bool = False,
        run: Run | None = None,
    ) -> None:
        with self._lock:
            self.state.interrupts += int(interrupt)
            self.state.memory_frees += int(memory_free)
            if upload is not None:
                self.state.uploads.append(upload)
            if executed is not None:
                self.state.executed.append(executed)
            if run is not None:
                self.state.runs.append(run)

    def received_prompt(self, body: Any) -> None:
        with self._lock:
            self.state.prompts_received += 1
            self.state.last_prompt_body = copy.deepcopy(body)

    def last_prompt_body(self) -> Any:
        with self._lock:
            return copy.deepcopy(self.state.last_prompt_body)

    def snapshot(self, running: str | None) -> dict[str, Any]:
        with self._lock:
            return {
                "prompts_received": self.state.prompts_received,
                "executed": list(self.state.executed),
                "interrupts": self.state.interrupts,
                "uploads": list(self.state.uploads),
                "running": running,
                "held": self.held,
                "memory_frees": self.state.memory_frees,
                "runs": [list(run) for run in self.state.runs],
            }


def make_exception(type_name: str, message: str) -> Exception:
    """An exception whose ``module.QualName`` is ``type_name``, so execution_error reports it verbatim."""
    module, _, name = type_name.rpartition(".")
    builtin = getattr(builtins, name, None)
    if not module and isinstance(builtin, type) and issubclass(builtin, Exception):
        return builtin(message)
    klass: type[Exception] = type(name, (Exception,), {"__module__": module or "builtins", "__qualname__": name})
    return klass(message)

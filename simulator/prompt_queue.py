"""The prompt queue and the in-memory history, with ComfyUI's exact ordering and status semantics.

Items are the tuples ComfyUI keeps, ``(number, prompt_id, prompt, extra_data, outputs_to_execute)``, held
in a raw heap: GET /queue shows ``queue_pending`` in heap order, not sorted (17_queue_clear). Every change
that ComfyUI announces calls ``on_change``, which broadcasts a ``status`` frame.
"""

from __future__ import annotations

import copy
import heapq
import threading
from collections.abc import Callable
from typing import Any

#: ComfyUI drops the oldest history entry past this many (execution.MAXIMUM_HISTORY_SIZE).
MAXIMUM_HISTORY_SIZE = 10000

QueueItem = tuple[Any, str, Any, dict[str, Any], list[str]]


class PromptQueue:
    """Thread-safe queue shared by the HTTP handlers and the executor thread."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self._mutex = threading.RLock()
        self._not_empty = threading.Condition(self._mutex)
        self._task_counter = 0
        self._queue: list[QueueItem] = []
        self._running: dict[int, QueueItem] = {}
        self._history: dict[str, dict[str, Any]] = {}
        self._flags: dict[str, Any] = {}

    def put(self, item: QueueItem) -> None:
        with self._mutex:
            heapq.heappush(self._queue, item)
            self._on_change()
            self._not_empty.notify()

    def get(self, timeout_s: float | None = None) -> tuple[QueueItem, int] | None:
        """Pop the next item; None when woken without one (a flag was set) or on timeout."""
        with self._not_empty:
            while not self._queue:
                self._not_empty.wait(timeout=timeout_s)
                if timeout_s is not None and not self._queue:
                    return None
            item = heapq.heappop(self._queue)
            task_id = self._task_counter
            # Deep-copied before execution, so history keeps the prompt as validated, without the
            # is_changed keys the executor adds to its own copy.
            self._running[task_id] = copy.deepcopy(item)
            self._task_counter += 1
            self._on_change()
            return item, task_id

    def task_done(self, task_id: int, history_result: dict[str, Any], status: dict[str, Any] | None) -> None:
        with self._mutex:
            item = self._running.pop(task_id)
            if len(self._history) > MAXIMUM_HISTORY_SIZE:
                self._history.pop(next(iter(self._history)))
            entry: dict[str, Any] = {"prompt": item, "outputs": {}, "status": copy.deepcopy(status)}
            entry.update(history_result)
            self._history[item[1]] = entry
            self._on_change()

    def current(self) -> tuple[list[QueueItem], list[QueueItem]]:
        """(running, pending) as GET /queue shows them."""
        with self._mutex:
            return list(self._running.values()), copy.copy(self._queue)

    def tasks_remaining(self) -> int:
        with self._mutex:
            return len(self._queue) + len(self._running)

    def running_prompt_id(self) -> str | None:
        with self._mutex:
            for item in self._running.values():
                return item[1]
            return None

    def wipe_queue(self) -> None:
        with self._mutex:
            self._queue = []
            self._on_change()

    def delete_queue_item(self, prompt_id: Any) -> bool:
        """Remove one pending prompt; an unknown id changes nothing and announces nothing (14)."""
        with self._mutex:
            for index, item in enumerate(self._queue):
                if item[1] == prompt_id:
                    if len(self._queue) == 1:
                        self.wipe_queue()
                    else:
                        self._queue.pop(index)
                        heapq.heapify(self._queue)
                    self._on_change()
                    return True
        return False

    def get_history(self, prompt_id: str | None = None, max_items: int | None = None) -> dict[str, Any]:
        with self._mutex:
            if prompt_id is not None:
                if prompt_id in self._history:
                    return {prompt_id: copy.deepcopy(self._history[prompt_id])}
                return {}
            offset = len(self._history) - max_items if max_items is not None else -1
            out: dict[str, Any] = {}
            for index, key in enumerate(self._history):
                if index >= offset:
                    out[key] = self._history[key]
                    if max_items is not None and len(out) >= max_items:
                        break
            return copy.deepcopy(out)

    def wipe_history(self) -> None:
        with self._mutex:
            self._history = {}

    def delete_history_item(self, prompt_id: Any) -> None:
        with self._mutex:
            self._history.pop(prompt_id, None)

    def set_flag(self, name: str, value: Any) -> None:
        with self._mutex:
            self._flags[name] = value
            self._not_empty.notify()

    def take_flags(self) -> dict[str, Any]:
        with self._mutex:
            flags, self._flags = self._flags, {}
            return flags

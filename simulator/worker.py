"""The prompt worker thread (main.prompt_worker): one prompt at a time, then the POST /free flags."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from simulator.faults import Faults
from simulator.messages import Messenger
from simulator.prompt_executor import PromptExecutor
from simulator.prompt_queue import PromptQueue, QueueItem

log = logging.getLogger("simulator.worker")

#: The extra_data keys under which a dance worker names a prompt's job and its own process.
JOB_MARK, WORKER_MARK = "dance_job_id", "dance_worker"
#: How long the worker sleeps on an empty queue before looking at flags again, in seconds (ComfyUI: 1000).
IDLE_WAKE_S = 1000.0


class PromptWorker(threading.Thread):
    def __init__(self, queue: PromptQueue, executor: PromptExecutor, messenger: Messenger, faults: Faults) -> None:
        super().__init__(name="prompt-worker", daemon=True)
        self._queue = queue
        self._executor = executor
        self._messenger = messenger
        self._faults = faults

    def run(self) -> None:
        while True:
            got = self._queue.get(timeout_s=IDLE_WAKE_S)
            if got is not None:
                self._run_one(*got)
            flags = self._queue.take_flags()
            free_memory = flags.get("free_memory", False)
            if flags.get("unload_models", free_memory):
                self._executor.unload_models()
            if free_memory:
                self._executor.reset()
                self._faults.record(memory_free=True)

    def _run_one(self, item: QueueItem, task_id: int) -> None:
        started = time.perf_counter()
        started_at = time.time()
        prompt_id = item[1]
        try:
            self._executor.execute(item[2], prompt_id, item[3], item[4])
        except Exception:
            # A simulator bug must not kill the worker thread and hang every later prompt.
            log.exception("simulator failed while executing %s", prompt_id)
            self._executor.success = False
        executor = self._executor
        status = {
            "status_str": "success" if executor.success else "error",
            "completed": executor.success,
            "messages": [list(message) for message in executor.status_messages],
        }
        self._queue.task_done(task_id, executor.history_result, status)
        # Recorded however the run ended (success, error, interrupt), with the job and worker marks a
        # dance worker puts in extra_data, so overlapping GPU runs of one job can be found.
        extra = item[3] if isinstance(item[3], dict) else {}
        run = (prompt_id, started_at, time.time(), _mark(extra, JOB_MARK), _mark(extra, WORKER_MARK))
        self._faults.record(executed=prompt_id, run=run)
        client_id = self._messenger.client_id
        if client_id is not None:
            self._messenger.send_sync("executing", {"node": None, "prompt_id": prompt_id}, client_id)
        log.info("Prompt executed in %.2f seconds", time.perf_counter() - started)


def _mark(extra: dict[str, Any], key: str) -> str | None:
    value = extra.get(key)
    return None if value is None else str(value)

"""Prompts an earlier run of this worker left in ComfyUI's queue, cleared before the worker takes work.

A worker killed mid-job (SIGKILL, OOM) leaves its prompts in ComfyUI when ComfyUI lives on, in a container
of its own: the running one and the one pipelining had queued behind it. ComfyUI would run both to the end
for nobody, while the jobs themselves come back through the broker and run again. Every prompt carries the
worker's name and a token of its process (``extra_data``); a restarted worker, which keeps its name, finds
the prompts of its earlier processes and removes them before it attaches its queues: the queued ones are
deleted, the running one is interrupted. Other workers' prompts are never touched.
"""

from __future__ import annotations

import logging
from typing import Any

from producer.errors import DanceError
from worker.comfy_http import ComfyHttp
from worker.marks import process_mark, queued_by, worker_mark
from worker.prompt_stop import stop_prompt

log = logging.getLogger(__name__)


def clear_orphans(http: ComfyHttp, nodename: str) -> None:
    """Delete the queued prompts, and interrupt the running one, that earlier processes of ``nodename``
    left in ComfyUI. Called before the worker takes work; a failure is logged, never raised."""
    try:
        queue = http.queue()
    except DanceError as exc:
        log.warning("could not clear the prompts an earlier run of %s left in ComfyUI: %s", nodename, exc)
        return
    pending = [item[1] for item in queue.get("queue_pending", []) if _orphaned(item, nodename)]
    running = [item[1] for item in queue.get("queue_running", []) if _orphaned(item, nodename)]
    # stop_prompt interrupts by id where ComfyUI can (0.12.3); on 0.3.39, whose /interrupt stops whatever
    # runs, only after it saw that the prompt still runs: the orphan may have ended, and the prompt now
    # running may be someone else's.
    stopped = [prompt_id for prompt_id in pending + running if stop_prompt(http, prompt_id)]
    if stopped:
        log.warning("cleared the prompts an earlier run of %s left in ComfyUI: %d pending %s, %d running %s",
                    nodename, len(pending), pending, len(running), running)


def _orphaned(item: Any, nodename: str) -> bool:
    mark = worker_mark(item)
    return mark is not None and queued_by(mark, nodename) and mark != process_mark(nodename)

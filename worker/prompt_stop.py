"""Stopping one prompt in ComfyUI, and only that one, whatever it is doing when the stop arrives.

A prompt moves from pending to running between any two requests: GET /queue said *pending*, the delete
arrived after it started, and the part ComfyUI had accepted ran to the end. So a stop never trusts one look:

* where ComfyUI takes a targeted interrupt (0.12.3: 21_interrupt_by_prompt_id) the prompt is deleted from
  the queue and then interrupted by id; whichever state it was in, one of the two catches it, and neither
  can touch another prompt (a targeted interrupt of a pending or finished prompt does nothing);
* on 0.3.39, whose /interrupt stops whatever runs (recordings/d_interrupt_body_ignored), the prompt is
  deleted while pending and interrupted only once GET /queue shows that it is the one running;
* either way the stop is confirmed: /queue is read until the prompt is in neither list, interrupting it
  again while it still runs. ComfyUI clears its interrupt flag when a prompt's execution begins, so an
  interrupt that lands between the prompt leaving the queue and its first node is lost.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from producer.errors import DanceError
from worker.comfy_http import ComfyHttp

log = logging.getLogger(__name__)

#: Timeout of each request a stop makes, in seconds: short, a stop runs on a job's failure path.
STOP_TIMEOUT_S = 5.0
#: How long a stop keeps confirming that the prompt left ComfyUI, in seconds.
STOP_CONFIRM_S = 10.0
#: Pause between two looks at the queue while confirming, in seconds.
STOP_POLL_S = 0.1
#: Least time between two interrupts of a prompt that still runs, in seconds: an interrupt during a node
#: without progress lands only when the next node starts (15_interrupt_non_progress_node).
REINTERRUPT_S = 2.0
PENDING, RUNNING = "pending", "running"


def queue_state(queue: dict[str, Any], prompt_id: str) -> str | None:
    """``running``, ``pending`` or None (in neither list) for ``prompt_id`` in a GET /queue body."""
    for state, key in ((RUNNING, "queue_running"), (PENDING, "queue_pending")):
        if any(_item_id(item) == prompt_id for item in queue.get(key) or []):
            return state
    return None


def stop_prompt(http: ComfyHttp, prompt_id: str, confirm_s: float = STOP_CONFIRM_S) -> bool:
    """Drop ``prompt_id`` from ComfyUI's queue or interrupt it, never another prompt; True once it is in
    neither of ComfyUI's lists. Best effort: a failure is logged, never raised."""
    give_up_at = time.monotonic() + confirm_s
    last_interrupt = -REINTERRUPT_S
    try:
        if http.targeted_interrupt:
            http.delete_queued([prompt_id], timeout_s=STOP_TIMEOUT_S)
            http.interrupt(prompt_id, timeout_s=STOP_TIMEOUT_S)
            last_interrupt = time.monotonic()
        while True:
            state = queue_state(http.queue(timeout_s=STOP_TIMEOUT_S), prompt_id)
            if state is None:
                return True
            if state == PENDING:
                http.delete_queued([prompt_id], timeout_s=STOP_TIMEOUT_S)
            elif time.monotonic() - last_interrupt >= REINTERRUPT_S:
                # On 0.3.39 this stops whatever runs: the look just above showed that it is ours.
                http.interrupt(prompt_id, timeout_s=STOP_TIMEOUT_S)
                last_interrupt = time.monotonic()
            if time.monotonic() >= give_up_at:
                log.warning("prompt %s is still %s in ComfyUI %.0fs after it was stopped", prompt_id, state, confirm_s)
                return False
            time.sleep(STOP_POLL_S)
    except DanceError as exc:
        log.warning("could not stop prompt %s: %s", prompt_id, exc)
        return False


def stop_prompts_of_client(http: ComfyHttp, client_id: str) -> list[str]:
    """Stop every prompt a client id submitted: for a POST /prompt whose answer never came, whose prompt
    ComfyUI may have queued all the same. Returns the ids found; best effort like :func:`stop_prompt`."""
    try:
        queue = http.queue(timeout_s=STOP_TIMEOUT_S)
    except DanceError as exc:
        log.warning("could not look for the prompts of client %s: %s", client_id, exc)
        return []
    items = [*(queue.get("queue_running") or []), *(queue.get("queue_pending") or [])]
    found = [str(item[1]) for item in items if _client_of(item) == client_id]
    for prompt_id in found:
        log.warning("stopping prompt %s, queued although POST /prompt did not answer in time", prompt_id)
        stop_prompt(http, prompt_id)
    return found


def _item_id(item: Any) -> str | None:
    return str(item[1]) if isinstance(item, list) and len(item) > 1 else None


def _client_of(item: Any) -> str | None:
    extra = item[3] if isinstance(item, list) and len(item) > 3 else None
    return str(extra.get("client_id")) if isinstance(extra, dict) else None

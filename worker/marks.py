"""What every prompt of ours carries in ComfyUI's ``extra_data``: its job, and the worker process that queued it.

ComfyUI keeps ``extra_data`` with the prompt in its queue and in its history (item 3 of
``[number, prompt_id, graph, extra_data, outputs_to_execute]``), so a worker can later tell its own prompts
from those of other workers sharing the ComfyUI (the sweep, worker/cleanup.py), and those of its earlier
processes from its own (the orphans, worker/orphans.py).
"""

from __future__ import annotations

import uuid
from typing import Any

#: The ``extra_data`` key that marks a prompt as one of ours: the job's id.
JOB_MARK = "dance_job_id"
#: The ``extra_data`` key naming the worker process that queued a prompt: ``<nodename>/<process token>``.
WORKER_MARK = "dance_worker"
#: Made once per process: a restarted worker has the same node name and a new token.
PROCESS_TOKEN = uuid.uuid4().hex[:12]
#: Index of ``extra_data`` in a queue item or a history entry's ``prompt``.
EXTRA_DATA_INDEX = 3


def process_mark(nodename: str) -> str:
    """A mark for the prompts of this worker process: its node name and a token no other process shares."""
    return f"{nodename}/{PROCESS_TOKEN}"


def worker_mark(item: Any) -> str | None:
    """The WORKER_MARK of a prompt of ours (a queue item or a history entry's ``prompt``); ``None`` for a
    prompt that is not a dance job's."""
    extra = item[EXTRA_DATA_INDEX] if isinstance(item, list) and len(item) > EXTRA_DATA_INDEX else None
    if not isinstance(extra, dict) or JOB_MARK not in extra:
        return None
    return str(extra.get(WORKER_MARK, ""))


def queued_by(mark: str, nodename: str) -> bool:
    """Whether ``mark`` names a process, this one or an earlier one, of the worker ``nodename``."""
    return bool(nodename) and mark.startswith(f"{nodename}/")

"""Leave nothing of a job behind in ComfyUI, which never cleans its own history or files.

Whatever the outcome, after a job: its history entry goes (and any older entry of ours that an
interrupted prompt wrote after its job had already ended, as long as no job of this worker still
waits for it), and, where the worker shares ComfyUI's
folders, the inputs it uploaded and the job's output subfolder. Nothing here ever fails a job.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

from producer.errors import DanceError
from worker.comfy_http import ComfyHttp

log = logging.getLogger(__name__)

#: Newest history entries looked at for leftovers of ours after each job.
HISTORY_SWEEP_ITEMS = 64
#: The ``extra_data`` key that marks a prompt as one of ours.
JOB_MARK = "dance_job_id"


def output_subfolder(job_id: str) -> str:
    """Where the bundled workflow's ``{{output_prefix}}`` puts a job's files, below ComfyUI's output."""
    return f"dance/{job_id}"


def clean_comfyui(
    http: ComfyHttp, job_id: str, prompt_id: str | None, uploaded: Iterable[str],
    input_dir: Path | None, output_dir: Path | None, in_flight: frozenset[str] = frozenset(),
) -> None:
    """Clean one job; ``in_flight`` are prompts of other jobs on this worker, whose entries stay."""
    stale = _our_history(http) - in_flight
    if prompt_id is not None:
        stale.add(prompt_id)
    if stale:
        try:
            http.delete_history(sorted(stale))
        except DanceError as exc:
            log.warning("job %s: could not delete ComfyUI history %s: %s", job_id, sorted(stale), exc)
    if input_dir is not None:
        for name in uploaded:
            with suppress(FileNotFoundError):
                (input_dir / name).unlink()
    if output_dir is not None:
        shutil.rmtree(output_dir / output_subfolder(job_id), ignore_errors=True)


def _our_history(http: ComfyHttp) -> set[str]:
    """Ids of finished prompts of ours still in the history: an interrupted prompt writes its entry
    when it actually stops, which may be after its job gave up on it (15_interrupt_non_progress_node)."""
    try:
        entries = http.recent_history(HISTORY_SWEEP_ITEMS)
    except DanceError:
        return set()
    return {prompt_id for prompt_id, entry in entries.items() if _is_ours(entry)}


def _is_ours(entry: Any) -> bool:
    prompt = entry.get("prompt") if isinstance(entry, dict) else None
    extra = prompt[3] if isinstance(prompt, list) and len(prompt) > 3 else None
    return isinstance(extra, dict) and JOB_MARK in extra

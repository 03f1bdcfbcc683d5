"""Leave nothing of a job behind in ComfyUI, which never cleans its own history or files.

Whatever the outcome, after a job: its history entry goes (and any older entry of ours that an
interrupted prompt wrote after its job had already ended, as long as no job of this worker still
waits for it), and, where the worker shares ComfyUI's folders (one worker per ComfyUI), every input
it uploaded and every job output subfolder that no running job of this worker still uses: leftovers
of a worker killed mid-job are swept by the next job. Nothing here ever fails a job.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producer.errors import DanceError
from worker.comfy_http import ComfyHttp

log = logging.getLogger(__name__)

#: Newest history entries looked at for leftovers of ours after each job.
HISTORY_SWEEP_ITEMS = 64
#: The ``extra_data`` key that marks a prompt as one of ours.
JOB_MARK = "dance_job_id"
#: Every input this worker uploads starts with this.
INPUT_PREFIX = "dance-"


def output_subfolder(job_id: str) -> str:
    """Where the bundled workflow's ``{{output_prefix}}`` puts a job's files, below ComfyUI's output
    (``dance/`` itself for an empty job id)."""
    return f"dance/{job_id}"


def input_name(job_id: str, role: str, suffix: str) -> str:
    """The name a job's input gets in ComfyUI's input folder: job-scoped, so concurrent jobs never
    overwrite each other's files, and recognisable, so leftovers can be swept."""
    return f"{INPUT_PREFIX}{job_id}-{role}{suffix}"


@dataclass(frozen=True)
class InFlight:
    """What other jobs on this worker still use: their prompts' history and their files stay."""

    prompt_ids: frozenset[str] = frozenset()
    job_ids: frozenset[str] = frozenset()


def clean_comfyui(
    http: ComfyHttp, job_id: str, prompt_id: str | None, input_dir: Path | None, output_dir: Path | None,
    in_flight: InFlight,
) -> None:
    """Clean one job and sweep what earlier jobs left (a worker killed mid-job cleans nothing)."""
    stale = _our_history(http) - in_flight.prompt_ids
    if prompt_id is not None:
        stale.add(prompt_id)
    if stale:
        try:
            http.delete_history(sorted(stale))
        except DanceError as exc:
            log.warning("job %s: could not delete ComfyUI history %s: %s", job_id, sorted(stale), exc)
    keep = in_flight.job_ids - {job_id}
    kept_inputs = tuple(input_name(other, "", "") for other in keep)
    if input_dir is not None:
        for path in _entries(input_dir):
            if path.name.startswith(INPUT_PREFIX) and not (kept_inputs and path.name.startswith(kept_inputs)):
                with suppress(FileNotFoundError):
                    path.unlink()
    if output_dir is not None:
        for path in _entries(output_dir / output_subfolder("")):
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []


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

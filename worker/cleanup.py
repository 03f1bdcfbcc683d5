"""Leave nothing of a job behind in ComfyUI, which never cleans its own history or files.

After every job, whatever its outcome, the janitor (a thread of its own, off the job's critical path)
deletes the job's history entry and, where the worker shares ComfyUI's folders (one worker per ComfyUI),
its uploaded inputs and its output subfolder. Every SWEEP_EVERY_S it also sweeps what earlier jobs left:
history entries of ours and files that no running job of this worker uses. Nothing here ever fails a job.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
#: How often the janitor looks for leftovers of earlier jobs, in seconds (and once at the first job).
SWEEP_EVERY_S = 30.0
#: How long a stopping worker waits for the cleanups already handed over, in seconds.
CLOSE_TIMEOUT_S = 10.0
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


class Janitor:
    """Cleans up after jobs on a thread of its own, off the jobs' critical path."""

    def __init__(
        self, http: ComfyHttp, input_dir: Path | None, output_dir: Path | None, in_flight: Callable[[], InFlight],
    ) -> None:
        self.http, self.input_dir, self.output_dir, self.in_flight = http, input_dir, output_dir, in_flight
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="janitor")
        self._last_sweep = -SWEEP_EVERY_S

    def job_done(self, job_id: str, prompt_id: str | None) -> None:
        self._executor.submit(self._clean, job_id, prompt_id)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Finish the cleanups already handed over (at worker shutdown)."""
        done = threading.Event()
        self._executor.submit(done.set)
        done.wait(timeout_s)
        self._executor.shutdown(wait=False)

    def _clean(self, job_id: str, prompt_id: str | None) -> None:
        try:
            self.clean_job(job_id, prompt_id)
            if time.monotonic() - self._last_sweep >= SWEEP_EVERY_S:
                self._last_sweep = time.monotonic()
                self.sweep()
        except Exception:  # deliberate: a cleanup that fails is logged and retried by the next sweep
            log.exception("cleanup after job %s failed", job_id)

    def clean_job(self, job_id: str, prompt_id: str | None) -> None:
        if prompt_id is not None:
            self._delete_history([prompt_id])
        if self.input_dir is not None:
            for path in self.input_dir.glob(f"{input_name(job_id, '', '')}*"):
                with suppress(FileNotFoundError):
                    path.unlink()
        if self.output_dir is not None:
            shutil.rmtree(self.output_dir / output_subfolder(job_id), ignore_errors=True)

    def sweep(self) -> None:
        """What earlier jobs left: a worker killed mid-job cleans nothing, and an interrupted prompt writes
        its history entry when it actually stops, maybe after its job gave up (15_interrupt_non_progress_node)."""
        in_flight = self.in_flight()
        stale = _our_history(self.http) - in_flight.prompt_ids
        if stale:
            self._delete_history(sorted(stale))
        kept_inputs = tuple(input_name(job, "", "") for job in in_flight.job_ids)
        if self.input_dir is not None:
            for path in _entries(self.input_dir):
                if path.name.startswith(INPUT_PREFIX) and not (kept_inputs and path.name.startswith(kept_inputs)):
                    with suppress(FileNotFoundError):
                        path.unlink()
        if self.output_dir is not None:
            for path in _entries(self.output_dir / output_subfolder("")):
                if path.name not in in_flight.job_ids:
                    shutil.rmtree(path, ignore_errors=True)

    def _delete_history(self, prompt_ids: list[str]) -> None:
        try:
            self.http.delete_history(prompt_ids)
        except DanceError as exc:
            log.warning("could not delete ComfyUI history %s: %s", prompt_ids, exc)


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

"""Leave nothing of a job behind in ComfyUI, which never cleans its own history or files.

After every job, whatever its outcome, the janitor (a thread of its own, off the job's critical path)
deletes the run's history entry and, where the worker shares ComfyUI's folders, the run's uploaded inputs
and its output subfolder. Names say whose a file is: ``dance-<job_id>~<worker tag>~<run token>~<role><suffix>``
in the input folder, ``dance/<job_id>~<worker tag>~<run token>/`` in the output folder. ``~`` never occurs in
a job id, so one run's cleanup removes exactly that run's files: never those of job ``<job_id>-retry``, and
never those of a later attempt of the same job (another run token), which this asynchronous cleanup would
otherwise race. Every SWEEP_EVERY_S it also sweeps what earlier runs of this worker left: history entries of
prompts this worker queued (``extra_data.dance_worker``), and inputs and output folders with this worker's tag
whose job it is not running. On a ComfyUI that workers share, another worker's prompts and files are never
touched. Nothing here ever fails a job.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producer.errors import DanceError
from worker.comfy_http import ComfyHttp
from worker.marks import queued_by, worker_mark

log = logging.getLogger(__name__)

#: Newest history entries looked at for leftovers of ours after each job.
HISTORY_SWEEP_ITEMS = 64
#: How often the janitor looks for leftovers of earlier jobs, in seconds (and once at the first job).
SWEEP_EVERY_S = 30.0
#: How long a stopping worker waits for the cleanups already handed over, in seconds.
CLOSE_TIMEOUT_S = 10.0
#: Every input this worker uploads starts with this.
INPUT_PREFIX = "dance-"
#: The folder below ComfyUI's output that holds one subfolder per run.
OUTPUT_FOLDER = "dance"
#: Separates the parts of a run's names. It never occurs in a job id ([A-Za-z0-9][A-Za-z0-9._-]*) nor in a
#: tag or token (hex); ComfyUI's upload takes any file name that stays in its folder (02_upload: only
#: traversal is refused, "probe (1).png" is fine), LoadImage's annotations are bracketed suffixes, and a URL
#: (/view?subfolder=) carries "~" unescaped.
NAME_SEP = "~"
#: Hex digits of the tag that names a worker in its files: short, and without a collision among the few
#: workers that share a ComfyUI (1 in 4 billion a pair).
WORKER_TAG_CHARS = 8
#: Hex digits of a run token: tells the attempts of one job apart.
RUN_TOKEN_CHARS = 8
#: Parts of a run's name: job id, worker tag, run token.
RUN_NAME_PARTS = 3


def new_run_token() -> str:
    """A token for one run of a job: its files are named after it, so no other run's cleanup touches them."""
    return uuid.uuid4().hex[:RUN_TOKEN_CHARS]


def worker_tag(nodename: str) -> str:
    """A short, file-name-safe tag of a worker's node name (``w@host`` has an ``@``, and may be long)."""
    return hashlib.sha256(nodename.encode()).hexdigest()[:WORKER_TAG_CHARS]


@dataclass(frozen=True)
class RunName:
    """Whose a file in ComfyUI's folders is, read back from its name."""

    job_id: str
    tag: str
    run_token: str

    @classmethod
    def parse(cls, stem: str) -> RunName | None:
        """The run ``<job_id>~<tag>~<run token>`` names, or ``None`` for a name not made by :class:`Names`."""
        parts = stem.split(NAME_SEP)
        if len(parts) != RUN_NAME_PARTS or not all(parts):
            return None
        return cls(*parts)

    @classmethod
    def of_input(cls, name: str) -> RunName | None:
        """The run an input's file name names: ``dance-<run>~<role><suffix>``."""
        if not name.startswith(INPUT_PREFIX):
            return None
        stem, sep, _role = name.removeprefix(INPUT_PREFIX).rpartition(NAME_SEP)
        return cls.parse(stem) if sep else None


@dataclass(frozen=True)
class Names:
    """How one worker names its runs' files in ComfyUI's folders, so that it can tell them apart later."""

    nodename: str

    @property
    def tag(self) -> str:
        return worker_tag(self.nodename)

    def run(self, job_id: str, run_token: str) -> str:
        return NAME_SEP.join((job_id, self.tag, run_token))

    def input_name(self, job_id: str, run_token: str, role: str, suffix: str) -> str:
        """The name a run's input gets in ComfyUI's input folder: run-scoped, so concurrent jobs and later
        attempts never overwrite or delete each other's files, and tagged, so only this worker sweeps it."""
        return f"{INPUT_PREFIX}{self.run(job_id, run_token)}{NAME_SEP}{role}{suffix}"

    def output_subfolder(self, job_id: str, run_token: str) -> str:
        """Where the bundled workflow's ``{{output_prefix}}`` puts a run's files, below ComfyUI's output."""
        return f"{OUTPUT_FOLDER}/{self.run(job_id, run_token)}"

    def sweepable(self, run: RunName | None, in_flight: InFlight) -> bool:
        """Whether the sweep may delete a file of ``run``: this worker's, and of no job it runs now."""
        return run is not None and run.tag == self.tag and run.job_id not in in_flight.job_ids


@dataclass(frozen=True)
class InFlight:
    """What other jobs on this worker still use: their prompts' history and their files stay."""

    prompt_ids: frozenset[str] = frozenset()
    job_ids: frozenset[str] = frozenset()


class Janitor:
    """Cleans up after jobs on a thread of its own, off the jobs' critical path.

    ``nodename`` is the worker's Celery node name, the one its prompts carry in ``extra_data``; the gate sets
    it when the consumer starts, before any job. Without it the sweep does nothing, since it could not tell
    this worker's leftovers from another's.
    """

    def __init__(
        self, http: ComfyHttp, input_dir: Path | None, output_dir: Path | None, in_flight: Callable[[], InFlight],
        nodename: str = "",
    ) -> None:
        self.http, self.input_dir, self.output_dir, self.in_flight = http, input_dir, output_dir, in_flight
        self.nodename = nodename
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="janitor")
        self._last_sweep = -SWEEP_EVERY_S

    @property
    def names(self) -> Names:
        return Names(self.nodename)

    def input_name(self, job_id: str, run_token: str, role: str, suffix: str) -> str:
        return self.names.input_name(job_id, run_token, role, suffix)

    def output_subfolder(self, job_id: str, run_token: str) -> str:
        return self.names.output_subfolder(job_id, run_token)

    def job_done(self, job_id: str, run_token: str, prompt_id: str | None) -> None:
        self._executor.submit(self._clean, job_id, run_token, prompt_id)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Finish the cleanups already handed over (at worker shutdown)."""
        done = threading.Event()
        self._executor.submit(done.set)
        done.wait(timeout_s)
        self._executor.shutdown(wait=False)

    def _clean(self, job_id: str, run_token: str, prompt_id: str | None) -> None:
        try:
            self.clean_job(job_id, run_token, prompt_id)
            if time.monotonic() - self._last_sweep >= SWEEP_EVERY_S:
                self._last_sweep = time.monotonic()
                self.sweep()
        except Exception:  # deliberate: a cleanup that fails is logged and retried by the next sweep
            log.exception("cleanup after job %s failed", job_id)

    def clean_job(self, job_id: str, run_token: str, prompt_id: str | None) -> None:
        """Delete one run's history entry, inputs and outputs, and nothing of any other run."""
        if prompt_id is not None:
            self._delete_history([prompt_id])
        names = self.names
        if self.input_dir is not None:
            # The empty role leaves "dance-<run>~": a prefix no other run's names share, "~" ending the token.
            prefix = names.input_name(job_id, run_token, "", "")
            for path in _entries(self.input_dir):
                if path.name.startswith(prefix):
                    with suppress(FileNotFoundError):
                        path.unlink()
        if self.output_dir is not None:
            shutil.rmtree(self.output_dir / names.output_subfolder(job_id, run_token), ignore_errors=True)

    def sweep(self) -> None:
        """What earlier runs of this worker left: a worker killed mid-job cleans nothing, and an interrupted
        prompt writes its history entry when it actually stops, maybe after its job gave up
        (15_interrupt_non_progress_node)."""
        if not self.nodename:
            return
        names, in_flight = self.names, self.in_flight()
        stale = _history_of(self.http, self.nodename) - in_flight.prompt_ids
        if stale:
            self._delete_history(sorted(stale))
        if self.input_dir is not None:
            for path in _entries(self.input_dir):
                if names.sweepable(RunName.of_input(path.name), in_flight):
                    with suppress(FileNotFoundError):
                        path.unlink()
        if self.output_dir is not None:
            for path in _entries(self.output_dir / OUTPUT_FOLDER):
                if names.sweepable(RunName.parse(path.name), in_flight):
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


def _history_of(http: ComfyHttp, nodename: str) -> set[str]:
    """Ids of finished prompts that a process of worker ``nodename`` queued and that are still in the history."""
    try:
        entries = http.recent_history(HISTORY_SWEEP_ITEMS)
    except DanceError:
        return set()
    return {prompt_id for prompt_id, entry in entries.items() if _queued_by(entry, nodename)}


def _queued_by(entry: Any, nodename: str) -> bool:
    mark = worker_mark(entry.get("prompt") if isinstance(entry, dict) else None)
    return mark is not None and queued_by(mark, nodename)

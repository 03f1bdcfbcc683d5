"""The warm-up before ready: the worker runs the workflow once itself, so its first job does not pay for
loading the models (users of the old endpoint saw ~45 s for a first run against 15 s warm).

Contract (the gate, worker/gate.py, calls :meth:`WarmUp.run` from its probe thread):

* It runs after the readiness probe first passes (and again after ComfyUI came back from being down), and
  before the task queues attach, so nothing sees the worker ready meanwhile: no worker_ready, no "ready."
  line, ``dance check``, Flower and the logs say "warming up". The event loop is not blocked, so the worker
  answers ping and stops on SIGTERM (the gate's stop event cancels the run, whose prompt is then stopped).
* ``DANCE_WARMUP=on`` runs the workflow with its smallest parameters (:data:`WARMUP_SIZE_PX` square,
  :data:`WARMUP_STEPS` step) on sample media the worker makes itself (demo/samples.py), so no binary ships;
  any other value but ``off`` names a request file: a job request as JSON whose media are job references
  (fetched and checked as a job's) or ``file://`` paths on the worker's own disk (taken as they are).
* It goes through the job's own code: upload, bind, queue, wait (worker/job.py), with
  ``DANCE_WARMUP_TIMEOUT_S`` as its deadline, then deletes its history entry and, where the worker shares
  ComfyUI's folders (COMFYUI_INPUT_DIR/COMFYUI_OUTPUT_DIR, as in the GPU image), its inputs and outputs,
  before the worker takes any job. It writes no job key, state or manifest.
* It raises the :class:`~producer.errors.DanceError` the run met; the gate decides what follows.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from producer.errors import CONFIG_INVALID, DanceError, error
from producer.schema import MIN_SIZE_PX, DanceRequest, parse_request
from worker.cleanup import new_run_token
from worker.dance_job import DanceJob
from worker.inputs import fetch_input
from worker.inputs.sniff import MediaKind
from worker.job import JobContext, execute, upload_input
from worker.ownership.cancels import CancelFlag
from worker.progress import ProgressReporter
from worker.runtime import Runtime
from worker.settings import WARMUP_OFF, WARMUP_ON

log = logging.getLogger(__name__)

#: Width and height of the bundled warm-up, in pixels: the smallest the request schema takes.
WARMUP_SIZE_PX = MIN_SIZE_PX
#: Sampler steps of the bundled warm-up: the fewest.
WARMUP_STEPS = 1
#: Frames of the bundled sample clip (a third of a second at 24 fps).
WARMUP_CLIP_FRAMES = 8
#: Size of the bundled sample clip's frames, in pixels (h264 wants even sides).
WARMUP_CLIP_PX = (64, 112)
#: Fixed seed of the bundled warm-up: every warm-up binds the same prompt.
WARMUP_SEED = 0
#: Prefix of a warm-up's run id, which names its files in ComfyUI and marks its prompt (``dance_job_id``).
WARMUP_ID_PREFIX = "warmup"
#: Largest warm-up request file, in bytes.
MAX_REQUEST_FILE_BYTES = 64 * 1024


class WarmupProgress(ProgressReporter):
    """A warm-up is no job: it has no task whose state to write, so its progress only reaches the debug log."""

    def __init__(self, run_id: str) -> None:
        super().__init__(None, run_id)

    def started(self, hostname: str) -> None:
        return None

    def _publish(self, update: dict[str, Any], force: bool) -> None:
        log.debug("warm-up %s: %s %s", self.job_id, self.stage, update)


class WarmUp:
    """One configured warm-up: the bundled samples, or an operator's request file."""

    def __init__(self, runtime: Runtime, request: DanceRequest | None = None, source: Path | None = None) -> None:
        self.runtime = runtime
        self.request = request
        self.source = source

    @classmethod
    def build(cls, runtime: Runtime) -> WarmUp | None:
        """The warm-up DANCE_WARMUP asks for, or None when it is off; a bad request file is ``config.invalid``."""
        mode = runtime.settings.warmup
        if mode == WARMUP_OFF:
            return None
        if mode == WARMUP_ON:
            return cls(runtime)
        path = Path(mode)
        return cls(runtime, read_request_file(path), path)

    def describe(self) -> str:
        if self.source is None:
            return f"bundled sample media, {WARMUP_SIZE_PX}x{WARMUP_SIZE_PX}, {WARMUP_STEPS} step"
        return f"request file {self.source}"

    def run(self, hostname: str, stop: threading.Event) -> float:
        """Run the workflow once and clean up after it; returns the seconds it took. ``stop`` cancels it."""
        runtime = self.runtime
        run_id = f"{WARMUP_ID_PREFIX}-{uuid.uuid4().hex[:12]}"
        ctx = JobContext(job_id=run_id, hostname=hostname, deadline_s=runtime.settings.warmup_timeout_s,
                         submitted_at=None, cancel=CancelFlag(event=stop), progress=WarmupProgress(run_id),
                         run_token=new_run_token())
        work = runtime.work_dir / run_id
        work.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        try:
            request = self.request or self._bundled_request(runtime.work_dir / WARMUP_ID_PREFIX)
            image = self._local_input(request.reference_image, work, "image")
            video = self._local_input(request.dance_video, work, "video")
            ctx.progress.stage_changed("uploading_inputs")
            image_name = upload_input(runtime, ctx, image, "reference")
            video_name = upload_input(runtime, ctx, video, "video")
            graph = DanceJob(request).bind(runtime, ctx, image_name, video_name)
            outcome = execute(runtime, ctx, graph)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            # At once, not on the janitor's thread: nothing of the warm-up may be left when jobs start.
            runtime.janitor.clean_job(run_id, ctx.run_token, ctx.prompt_id)
        took_s = time.monotonic() - began
        log.info("warm-up %s: ComfyUI ran the workflow in %.2fs (%.2fs in all)", run_id, outcome.execute_s, took_s)
        return took_s

    def _local_input(self, ref: str, work: Path, kind: MediaKind) -> Path:
        """A file:// reference outside the worker's storage is the operator's own file; anything else is
        fetched and checked exactly as a job's input is."""
        runtime = self.runtime
        if urlsplit(ref).scheme.lower() == "file" and not runtime.storage.owns(ref):
            return Path(url2pathname(urlsplit(ref).path))
        return fetch_input(ref, work, kind, runtime.settings.fetch, runtime.storage).path

    @staticmethod
    def _bundled_request(folder: Path) -> DanceRequest:
        # Imported here: only a worker that warms up on the bundled samples needs PyAV's encoder.
        from demo.samples import make_character_png, make_dance_mp4

        image, video = folder / "character.png", folder / "dance.mp4"
        if not image.exists():
            make_character_png(image, WARMUP_SIZE_PX, WARMUP_SIZE_PX)
        if not video.exists():
            width, height = WARMUP_CLIP_PX
            make_dance_mp4(video, WARMUP_CLIP_FRAMES, width, height)
        return parse_request({
            "reference_image": image.as_uri(), "dance_video": video.as_uri(), "prompt": "a person dancing",
            "width": WARMUP_SIZE_PX, "height": WARMUP_SIZE_PX, "steps": WARMUP_STEPS, "seed": WARMUP_SEED,
        })


def read_request_file(path: Path) -> DanceRequest:
    """A warm-up request file: one job request as JSON, checked as a job's request is."""
    try:
        raw = path.read_bytes()[:MAX_REQUEST_FILE_BYTES + 1]
        if len(raw) > MAX_REQUEST_FILE_BYTES:
            raise ValueError(f"larger than {MAX_REQUEST_FILE_BYTES} bytes")
        request = parse_request(json.loads(raw))
    except (OSError, ValueError) as exc:
        raise error(CONFIG_INVALID, f"DANCE_WARMUP={path}: not a readable warm-up request file ({exc})",
                    path=str(path)) from exc
    except DanceError as exc:
        raise error(CONFIG_INVALID, f"DANCE_WARMUP={path}: the warm-up request is not valid: {exc}",
                    path=str(path), cause=exc.code) from exc
    for ref in (request.reference_image, request.dance_video):
        local = urlsplit(ref)
        if local.scheme.lower() == "file" and not Path(url2pathname(local.path)).is_file():
            raise error(CONFIG_INVALID, f"DANCE_WARMUP={path}: the warm-up medium {ref} does not exist",
                        path=str(path), medium=ref)
    return request

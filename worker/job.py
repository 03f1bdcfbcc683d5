"""One dance job, from request to stored outputs: validate, fetch, upload, run, collect, record, clean.

The stages run in this order and each is timed. The manifest is written last, so its presence in
storage means the job's outputs are complete; only then is ComfyUI cleaned (history entry and our
uploaded inputs), because ComfyUI never cleans its own history or files.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from producer import keys
from producer.errors import (
    COMFY_TIMEOUT,
    JOB_ALREADY_ENDED,
    JOB_BUSY_ELSEWHERE,
    JOB_CANCELLED,
    JOB_DUPLICATE_DELIVERY,
    JOB_FENCED,
    DanceError,
    error,
)
from producer.redact import redact_url
from producer.schema import DanceRequest, parse_request
from worker.cleanup import new_run_token
from worker.comfy_ws import EventSocket
from worker.inputs import FetchedInput, fetch_input
from worker.jobid import checked_job_id
from worker.marks import JOB_MARK, WORKER_MARK, process_mark
from worker.outputs import MANIFEST_NAME, store_outputs
from worker.ownership.cancels import FENCED, CancelFlag
from worker.ownership.leases import new_token
from worker.ownership.predecessor import forget_prompt, record_prompt, stop_predecessor
from worker.ownership.registry import CLAIMING, Run
from worker.pipeline import EXECUTING, FINISHING, PREPARING, WAITING
from worker.progress import ProgressReporter
from worker.prompt_run import PromptOutcome, PromptRun
from worker.prompt_stop import stop_prompts_of_client
from worker.runtime import Runtime

log = logging.getLogger(__name__)

#: Pause between two looks at a job whose execution lease another run holds, in seconds.
LEASE_POLL_S = 0.5
#: A lease TTL that grew by more than this between two looks was renewed: its holder lives, in ms.
RENEWAL_SEEN_MS = 100
#: Largest manifest read back from storage, in bytes (16 MiB).
MANIFEST_MAX_BYTES = 16 << 20


@dataclass
class Timings:
    queued_s: float = 0.0
    download_s: float = 0.0
    execute_s: float = 0.0
    upload_s: float = 0.0
    total_s: float = 0.0


@dataclass
class JobContext:
    job_id: str
    hostname: str
    deadline_s: float
    submitted_at: float | None
    cancel: CancelFlag
    progress: ProgressReporter
    started_at: float = field(default_factory=time.time)
    timings: Timings = field(default_factory=Timings)
    prompt_id: str | None = None
    #: Moves the job to another pipeline phase (worker/pipeline.py).
    phase: Callable[[str], None] = field(default=lambda _phase: None)
    #: This run in the worker's registry (worker/ownership/registry.py): its lease, prompt and phase.
    run: Run | None = None
    #: This start's number among the job's starts, counted once the run owns the job (0 before).
    attempt: int = 0
    #: Names this run's files in ComfyUI, so no other run's cleanup deletes them; run_job makes one.
    run_token: str = ""


def run_job(runtime: Runtime, ctx: JobContext, raw_request: object) -> dict[str, Any]:
    """Run the job to its result dict; raises a :class:`DanceError` on failure."""
    request = parse_request(raw_request)  # never trust the producer's validation
    checked_job_id(ctx.job_id)  # before any key or path is built from it
    ctx.run_token = ctx.run_token or new_run_token()
    try:
        finished = _claim(runtime, ctx)
        if finished is not None:
            log.info("job %s already has a manifest; returning it without GPU work", ctx.job_id)
            return finished
        ctx.phase(PREPARING)
        ctx.progress.started(ctx.hostname)
        ctx.attempt = count(runtime, keys.attempts(ctx.job_id))
        if ctx.attempt > 1:
            log.info("job %s: attempt %d", ctx.job_id, ctx.attempt)
        return _run_owned(runtime, ctx, request)
    finally:
        _release(runtime, ctx)


def _run_owned(runtime: Runtime, ctx: JobContext, request: DanceRequest) -> dict[str, Any]:
    if ctx.submitted_at:
        ctx.timings.queued_s = max(0.0, ctx.started_at - ctx.submitted_at)
    job_dir = runtime.work_dir / checked_job_id(ctx.job_id)
    job_dir.mkdir(parents=True, exist_ok=True)
    try:
        image, video = _fetch_inputs(runtime, ctx, request, job_dir)
        graph, seed = bind(runtime, ctx, request, image, video)
        outcome = execute(runtime, ctx, graph)
        return _record(runtime, ctx, request, seed, outcome)
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)
        runtime.janitor.job_done(ctx.job_id, ctx.run_token, ctx.prompt_id)


def _release(runtime: Runtime, ctx: JobContext) -> None:
    token = runtime.registry.drop_lease(ctx.run) if ctx.run is not None else None
    if token is None:
        return
    try:
        forget_prompt(runtime.redis, ctx.job_id, token)  # its prompt ended or was stopped on the way out
        runtime.leases.release(ctx.job_id, token)
    except redis.RedisError as exc:  # deliberate: the lease then ends by its TTL, and the job's own error wins
        log.warning("job %s: execution lease not released (%s); it expires by itself", ctx.job_id, exc)


def _claim(runtime: Runtime, ctx: JobContext) -> dict[str, Any] | None:
    """Take the job's execution lease, or return the manifest of a run that already finished it.

    A redelivered copy of a job (a broker reconnect restores a running job's message; a sweep restores
    one whose holder stopped refreshing it) decides quickly, holding a thread but not the GPU:

    * the job already ended (failed or was cancelled for good): the copy is dropped, not run again;
    * another run holds the lease and renews it (it lives: a run of this worker, or a renewal seen within
      one lease TTL): the copy is dropped. Its acknowledgement deletes the ``unacked`` entry it shares with
      the live run (same delivery tag); the live run's heartbeat puts it back (worker/ownership/kombu_compat.py);
    * the lease expires unrenewed (its holder died): the copy takes it over and runs the job.
    """
    decide_by = time.monotonic() + runtime.leases.ttl_s + runtime.settings.heartbeat_interval_s
    seen_ms: int | None = None
    while True:
        finished = _existing_manifest(runtime, ctx.job_id)
        if finished is not None:
            return finished
        _raise_if_cancelled(runtime, ctx)
        _raise_if_ended(runtime, ctx)
        token = new_token(ctx.hostname)
        if runtime.leases.try_acquire(ctx.job_id, token):
            if ctx.run is not None:
                runtime.registry.take_lease(ctx.run, token)
            # The holder may have finished between our look at storage and the acquire.
            finished = _existing_manifest(runtime, ctx.job_id)
            if finished is None:
                stop_predecessor(runtime.redis, ctx.job_id, token)  # a dead run's prompt may still hold a GPU
            return finished
        holder = runtime.leases.holder(ctx.job_id)
        remaining_ms = runtime.leases.remaining_ms(ctx.job_id)
        alive_here = holder is not None and runtime.registry.holder_alive_here(ctx.job_id, holder)
        if alive_here or (seen_ms is not None and remaining_ms > seen_ms + RENEWAL_SEEN_MS):
            raise error(JOB_DUPLICATE_DELIVERY, "a live run holds this job; this redelivered copy is dropped",
                        job_id=ctx.job_id, holder=holder)
        if time.monotonic() >= decide_by:
            raise error(JOB_BUSY_ELSEWHERE, "another run holds this job's execution lease and neither renews "
                        "nor releases it", job_id=ctx.job_id, holder=holder)
        if seen_ms is None:
            log.warning("job %s is held by %s; checking that it lives", ctx.job_id, holder)
            ctx.phase(CLAIMING)
        seen_ms = remaining_ms if remaining_ms >= 0 else seen_ms
        ctx.cancel.event.wait(LEASE_POLL_S)


def _raise_if_ended(runtime: Runtime, ctx: JobContext) -> None:
    ended = runtime.redis.get(keys.job_ended(ctx.job_id))
    if ended is not None:
        raise error(JOB_ALREADY_ENDED, "the job already ended; this redelivered copy is dropped",
                    job_id=ctx.job_id, ended=json.loads(ended))


def _raise_if_fenced(runtime: Runtime, ctx: JobContext) -> None:
    """The fence before every write of the job's result: only the lease's holder writes."""
    token = ctx.run.lease_token if ctx.run is not None else None
    if ctx.cancel.reason == FENCED or token is None or not runtime.leases.holds(ctx.job_id, token):
        if ctx.run is not None:
            runtime.registry.fence(ctx.run)
        raise error(JOB_FENCED, "another run holds this job's execution lease now; this run writes nothing",
                    job_id=ctx.job_id)


def _existing_manifest(runtime: Runtime, job_id: str) -> dict[str, Any] | None:
    key = f"{job_id}/{MANIFEST_NAME}"
    if not runtime.storage.exists(key):
        return None
    manifest: dict[str, Any] = json.loads(runtime.storage.read_bytes(key, max_bytes=MANIFEST_MAX_BYTES))
    return manifest


def _raise_if_cancelled(runtime: Runtime, ctx: JobContext) -> None:
    if ctx.cancel.event.is_set() or runtime.redis.exists(keys.cancelled(ctx.job_id)):
        raise error(JOB_CANCELLED, "the job was cancelled before it ran", job_id=ctx.job_id)


def _fetch_inputs(
    runtime: Runtime, ctx: JobContext, request: DanceRequest, job_dir: Path
) -> tuple[str, str]:
    ctx.progress.stage_changed("downloading")
    began = time.monotonic()
    settings = runtime.settings.fetch
    image = fetch_input(request.reference_image, job_dir, "image", settings, runtime.storage)
    _raise_if_cancelled(runtime, ctx)
    video = fetch_input(request.dance_video, job_dir, "video", settings, runtime.storage)
    ctx.timings.download_s = time.monotonic() - began
    _raise_if_cancelled(runtime, ctx)
    return upload_inputs(runtime, ctx, image, video)


def upload_inputs(runtime: Runtime, ctx: JobContext, image: FetchedInput | Path, video: FetchedInput | Path
                  ) -> tuple[str, str]:
    """Upload a run's two checked inputs to ComfyUI; returns the names its loaders take."""
    ctx.progress.stage_changed("uploading_inputs")
    # Run-scoped names: concurrent jobs and attempts on one ComfyUI never overwrite each other's inputs.
    image_name = _upload(runtime, ctx, image, "reference")
    video_name = _upload(runtime, ctx, video, "video")
    return image_name, video_name


def _upload(runtime: Runtime, ctx: JobContext, fetched: FetchedInput | Path, role: str) -> str:
    path = fetched.path if isinstance(fetched, FetchedInput) else fetched
    return runtime.http.upload_image(path, runtime.janitor.input_name(ctx.job_id, ctx.run_token, role, path.suffix))


def bind(
    runtime: Runtime, ctx: JobContext, request: DanceRequest, image: str, video: str
) -> tuple[dict[str, Any], int]:
    seed = request.resolved_seed(ctx.job_id)
    graph = runtime.workflow.bind({
        "reference_image_filename": image,
        "dance_video_filename": video,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "width": request.width,
        "height": request.height,
        "steps": request.steps,
        "cfg": request.cfg,
        "seed": seed,
        "output_prefix": f"{runtime.janitor.output_subfolder(ctx.job_id, ctx.run_token)}/dance",
        "job_id": ctx.job_id,
    })
    return graph, seed


def execute(runtime: Runtime, ctx: JobContext, graph: dict[str, Any]) -> PromptOutcome:
    """Queue the bound graph and wait for its outcome, stopping the prompt whenever the wait ends early."""
    ctx.progress.node_classes = {node_id: node["class_type"] for node_id, node in graph.items()}
    ctx.progress.stage_changed("executing")
    # A fresh client id per attempt: a stale socket of an earlier attempt can never steal the
    # registration of this one (19_two_clients).
    client_id = f"dance-{ctx.job_id}-{uuid.uuid4().hex[:8]}"
    sock = EventSocket(runtime.settings.comfyui_url, client_id)
    sock.connect()  # before POST /prompt, so no message of our prompt can be missed
    run: PromptRun | None = None
    try:
        extra = {JOB_MARK: ctx.job_id, WORKER_MARK: process_mark(ctx.hostname)}
        submitted = runtime.http.queue_prompt(graph, client_id, extra)
        ctx.prompt_id = submitted.prompt_id
        # The execution deadline counts from the prompt's start, not from here: a pipelined prompt
        # first waits behind the running one, a wait bounded on its own (COMFYUI_QUEUE_WAIT_S).
        run = PromptRun(runtime.http, sock, submitted.prompt_id, ctx.deadline_s, ctx.cancel.event, ctx.progress.comfy,
                        on_start=lambda: ctx.phase(EXECUTING), on_tick=ctx.progress.flush,
                        queue_wait_s=runtime.settings.comfyui_queue_wait_s)
        if ctx.run is not None:
            ctx.run.prompt_id = submitted.prompt_id
            if ctx.run.lease_token is not None:
                record_prompt(runtime.redis, ctx.job_id, ctx.run.lease_token, runtime.settings.comfyui_url,
                              submitted.prompt_id)
        ctx.phase(WAITING)
        if ctx.run is not None:  # a run outside the registry (the warm-up) is no job and has no job keys
            count(runtime, keys.executions(ctx.job_id))
        log.info("job %s: ComfyUI prompt %s queued", ctx.job_id, submitted.prompt_id)
        if submitted.rejection is not None:
            raise submitted.rejection  # the valid part was queued: stopped below, no GPU time for a failed job
        outcome = run.wait()
    except BaseException as exc:
        # Whatever ends the wait early (a ComfyUI timeout, a Redis error while reporting progress, a bug,
        # a shutdown), the prompt must not go on holding the GPU while the job runs again elsewhere.
        _stop_own_prompt(runtime, run, client_id, exc)
        raise
    finally:
        sock.close()
        ctx.phase(FINISHING)
    ctx.timings.execute_s = outcome.execute_s
    return outcome


def _stop_own_prompt(runtime: Runtime, run: PromptRun | None, client_id: str, exc: BaseException) -> None:
    if run is not None:
        run.stop_prompt()
    elif isinstance(exc, DanceError) and exc.code == COMFY_TIMEOUT:
        # POST /prompt did not answer in time; ComfyUI may have queued the prompt all the same.
        stop_prompts_of_client(runtime.http, client_id)


def _record(
    runtime: Runtime, ctx: JobContext, request: DanceRequest, seed: int, outcome: PromptOutcome
) -> dict[str, Any]:
    _raise_if_fenced(runtime, ctx)
    ctx.progress.stage_changed("uploading_outputs")
    began = time.monotonic()
    stored = store_outputs(runtime.http, runtime.storage, ctx.job_id, outcome.outputs)
    ctx.timings.upload_s = time.monotonic() - began
    ctx.timings.total_s = time.time() - ctx.started_at
    params = {**request.to_payload(), "seed": seed, "notes": list(request.notes)}
    # Media URLs may carry signed-URL tokens or credentials; results and manifests never do.
    params["reference_image"] = redact_url(request.reference_image)
    params["dance_video"] = redact_url(request.dance_video)
    result: dict[str, Any] = {
        "job_id": ctx.job_id,
        "status": "succeeded",
        "outputs": stored,
        "seed": seed,
        "params": params,
        "timings": {name: round(value, 3) for name, value in vars(ctx.timings).items()},
        "worker": {"hostname": ctx.hostname, "device": runtime.device},
        "comfyui": {"prompt_id": outcome.prompt_id, "cached_nodes": list(outcome.cached_nodes)},
    }
    _raise_if_fenced(runtime, ctx)
    manifest = runtime.storage.put_bytes_if_absent(
        f"{ctx.job_id}/{MANIFEST_NAME}", json.dumps(result, indent=2).encode(), "application/json"
    )
    if manifest is None:
        # Another run completed the job first and its manifest stands: the producer gets that result.
        log.warning("job %s: another run already wrote the manifest; returning its result", ctx.job_id)
        winner: dict[str, Any] = json.loads(
            runtime.storage.read_bytes(f"{ctx.job_id}/{MANIFEST_NAME}", max_bytes=MANIFEST_MAX_BYTES)
        )
        return winner
    count(runtime, keys.manifest_writes(ctx.job_id))
    result["manifest"] = {"uri": manifest.uri, "url": manifest.url}
    return result


def count(runtime: Runtime, key: str) -> int:
    """INCR a per-job counter (attempts, GPU runs, manifest writes) and keep it as long as the job's
    other keys; returns the new count. The chaos run reads them to find duplicates."""
    pipe = runtime.redis.pipeline()
    pipe.incr(key)
    pipe.expire(key, keys.JOB_KEY_TTL_S)
    return int(pipe.execute()[0])

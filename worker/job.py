"""The path every job takes, whatever its kind: claim, prepare, execute, record, clean.

A job kind (worker/dance_job.py: the typed dance job; worker/workflow_job.py: an arbitrary API-format graph)
supplies only what differs: how its inputs become a graph ComfyUI can run (:meth:`JobKind.prepare`) and how
the prompt's files become the job's outputs (:meth:`JobKind.store`). Everything else is shared and happens
here in this order, each stage timed: the execution lease (worker/claim.py), STARTED and the attempt count,
the prompt with its pipelining phases, deadline and cancel, the fence before every result write, the
manifest written last (put-if-absent, so its presence in storage means the job's outputs are complete), and
only then the cleanup of ComfyUI (history entry and the run's uploaded inputs and outputs), because ComfyUI
never cleans its own history or files.
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
from typing import Any, Protocol

import redis

from producer import keys
from producer.errors import COMFY_TIMEOUT, DanceError
from worker.claim import claim, raise_if_cancelled, raise_if_fenced, read_manifest
from worker.cleanup import new_run_token
from worker.comfy_ws import EventSocket
from worker.jobid import checked_job_id
from worker.marks import JOB_MARK, WORKER_MARK, process_mark
from worker.outputs import MANIFEST_NAME
from worker.ownership.cancels import CancelFlag
from worker.ownership.predecessor import forget_prompt, record_prompt
from worker.ownership.registry import Run
from worker.pipeline import EXECUTING, FINISHING, PREPARING, WAITING
from worker.progress import ProgressReporter
from worker.prompt_run import PromptOutcome, PromptRun
from worker.prompt_stop import stop_prompts_of_client
from worker.runtime import Runtime

log = logging.getLogger(__name__)


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


class JobKind(Protocol):
    """What one kind of job does on the shared path; both steps raise :class:`DanceError` on failure."""

    def prepare(self, runtime: Runtime, ctx: JobContext, job_dir: Path) -> dict[str, Any]:
        """Fetch and upload the job's inputs (run-scoped names) and return the graph to queue."""

    def store(self, runtime: Runtime, ctx: JobContext, outcome: PromptOutcome, job_dir: Path) -> dict[str, Any]:
        """Store the prompt's files; returns the fields of the result that belong to this kind."""


def run_job(runtime: Runtime, ctx: JobContext, kind: JobKind) -> dict[str, Any]:
    """Run the job to its result dict; raises a :class:`DanceError` on failure."""
    checked_job_id(ctx.job_id)  # before any key or path is built from it
    ctx.run_token = ctx.run_token or new_run_token()
    try:
        finished = claim(runtime, ctx)
        if finished is not None:
            log.info("job %s already has a manifest; returning it without GPU work", ctx.job_id)
            return finished
        ctx.phase(PREPARING)
        ctx.progress.started(ctx.hostname)
        ctx.attempt = start_attempt(runtime, ctx.job_id)
        if ctx.attempt > 1:
            log.info("job %s: attempt %d", ctx.job_id, ctx.attempt)
        return _run_owned(runtime, ctx, kind)
    finally:
        _release(runtime, ctx)


def _run_owned(runtime: Runtime, ctx: JobContext, kind: JobKind) -> dict[str, Any]:
    if ctx.submitted_at:
        ctx.timings.queued_s = max(0.0, ctx.started_at - ctx.submitted_at)
    job_dir = runtime.work_dir / checked_job_id(ctx.job_id)
    job_dir.mkdir(parents=True, exist_ok=True)
    try:
        graph = kind.prepare(runtime, ctx, job_dir)
        raise_if_cancelled(runtime, ctx)
        outcome = execute(runtime, ctx, graph)
        return _record(runtime, ctx, kind, outcome, job_dir)
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)
        runtime.janitor.job_done(ctx.job_id, ctx.run_token, ctx.prompt_id)


def _release(runtime: Runtime, ctx: JobContext) -> None:
    token = runtime.registry.drop_lease(ctx.run) if ctx.run is not None else None
    if token is None:
        return
    try:
        pipe = runtime.redis.pipeline()  # both in one round trip
        forget_prompt(pipe, ctx.job_id, token)  # its prompt ended or was stopped on the way out
        runtime.leases.release(ctx.job_id, token, pipe)
        pipe.execute()
    except redis.RedisError as exc:  # deliberate: the lease then ends by its TTL, and the job's own error wins
        log.warning("job %s: execution lease not released (%s); it expires by itself", ctx.job_id, exc)


def upload_input(runtime: Runtime, ctx: JobContext, path: Path, role: str) -> str:
    """Upload one input under a run-scoped name: concurrent jobs and attempts on one ComfyUI never overwrite
    each other's inputs, and the janitor removes exactly this run's files."""
    return runtime.http.upload_image(path, runtime.janitor.input_name(ctx.job_id, ctx.run_token, role, path.suffix))


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
        if ctx.run is not None:  # a run outside the registry (the warm-up) is no job and has no job keys
            ctx.run.prompt_id = submitted.prompt_id
            _record_queued(runtime, ctx.job_id, ctx.run.lease_token, submitted.prompt_id)
        ctx.phase(WAITING)
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


def _record_queued(runtime: Runtime, job_id: str, lease_token: str | None, prompt_id: str) -> None:
    """Record where the prompt runs (for a run that may take the job over) and count one more GPU run,
    in one round trip."""
    pipe = runtime.redis.pipeline()
    if lease_token is not None:
        record_prompt(pipe, job_id, lease_token, runtime.settings.comfyui_url, prompt_id)
    pipe.incr(keys.executions(job_id))
    pipe.expire(keys.executions(job_id), keys.JOB_KEY_TTL_S)
    pipe.execute()


def _stop_own_prompt(runtime: Runtime, run: PromptRun | None, client_id: str, exc: BaseException) -> None:
    if run is not None:
        run.stop_prompt()
    elif isinstance(exc, DanceError) and exc.code == COMFY_TIMEOUT:
        # POST /prompt did not answer in time; ComfyUI may have queued the prompt all the same.
        stop_prompts_of_client(runtime.http, client_id)


def _record(
    runtime: Runtime, ctx: JobContext, kind: JobKind, outcome: PromptOutcome, job_dir: Path
) -> dict[str, Any]:
    raise_if_fenced(runtime, ctx)
    ctx.progress.stage_changed("uploading_outputs")
    began = time.monotonic()
    fields = kind.store(runtime, ctx, outcome, job_dir)
    ctx.timings.upload_s = time.monotonic() - began
    ctx.timings.total_s = time.time() - ctx.started_at
    result: dict[str, Any] = {
        "job_id": ctx.job_id,
        "status": "succeeded",
        **fields,
        "timings": {name: round(value, 3) for name, value in vars(ctx.timings).items()},
        "worker": {"hostname": ctx.hostname, "device": runtime.device},
        "comfyui": {"prompt_id": outcome.prompt_id, "cached_nodes": list(outcome.cached_nodes)},
    }
    raise_if_fenced(runtime, ctx)
    manifest = runtime.storage.put_bytes_if_absent(
        f"{ctx.job_id}/{MANIFEST_NAME}", json.dumps(result, indent=2).encode(), "application/json"
    )
    if manifest is None:
        # Another run completed the job first and its manifest stands: the producer gets that result.
        log.warning("job %s: another run already wrote the manifest; returning its result", ctx.job_id)
        return read_manifest(runtime, ctx.job_id)
    count(runtime, keys.manifest_writes(ctx.job_id))
    result["manifest"] = {"uri": manifest.uri, "url": manifest.url}
    return result


def start_attempt(runtime: Runtime, job_id: str) -> int:
    """Count one more start of the job and record when it began (the gateway's ``started_at``), in one
    round trip; returns the attempt number."""
    pipe = runtime.redis.pipeline()
    pipe.incr(keys.attempts(job_id))
    pipe.expire(keys.attempts(job_id), keys.JOB_KEY_TTL_S)
    pipe.set(keys.started(job_id), repr(time.time()), ex=keys.JOB_KEY_TTL_S)
    return int(pipe.execute()[0])


def count(runtime: Runtime, key: str) -> int:
    """INCR a per-job counter (attempts, GPU runs, manifest writes) and keep it as long as the job's
    other keys; returns the new count. The chaos run reads them to find duplicates."""
    pipe = runtime.redis.pipeline()
    pipe.incr(key)
    pipe.expire(key, keys.JOB_KEY_TTL_S)
    return int(pipe.execute()[0])

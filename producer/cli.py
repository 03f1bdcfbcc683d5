"""The ``dance`` command: a thin shell over :mod:`producer.client` (and ``dance worker`` over Celery).

Options are declared once, each with its environment fallback; every subcommand calls the same client
API that services use. Exit codes are the named constants of :mod:`producer.cli_support`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from producer.cli_support import (
    EXIT_BROKER,
    EXIT_CANCELLED,
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNKNOWN_JOB,
    EXIT_USAGE,
    exit_code_for,
    fail,
    json_option,
    run_client,
)
from producer.client import DanceClient, JobHandle
from producer.errors import REQUEST_NOT_OBJECT, error
from producer.progressbar import ProgressLine, describe_progress


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main() -> None:
    """Submit and follow dance-video jobs on the XiCON Dance Cluster.

    The broker comes from CELERY_BROKER_URL (default redis://127.0.0.1:6379/0).
    """


@main.command()
@click.option("--request", "request_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A JSON request (either accepted shape); flags below override its fields.")
@click.option("--reference-image", help="Character image: http(s) URL, s3:// URI or a local file.")
@click.option("--dance-video", help="Driving dance clip: http(s) URL, s3:// URI or a local file.")
@click.option("--prompt")
@click.option("--negative-prompt")
@click.option("--width", type=int, help="Pixels; rounded down to a multiple of 32.")
@click.option("--height", type=int, help="Pixels; rounded down to a multiple of 32.")
@click.option("--steps", type=int)
@click.option("--cfg", type=float)
@click.option("--seed", type=int, help="-1 (default) picks one; the seed used is in the result.")
@click.option("--job-id", help="Idempotency key: resubmitting the same id never runs the job twice.")
@click.option("--queue", envvar="DANCE_QUEUE", help="Queue to send to (env DANCE_QUEUE; default 'dance').")
@click.option("--priority", type=int, help="0 runs first, 9 last (default 5).")
@click.option("--timeout", "timeout_s", type=float, help="Execution deadline of the job, in seconds.")
@click.option("--callback-url", help="Gets a signed webhook (Standard Webhooks) when the job ends.")
@click.option("--wait", is_flag=True, help="Wait for the result, showing live progress.")
@click.option("--wait-timeout", "wait_timeout_s", type=float, envvar="DANCE_WAIT_TIMEOUT_S",
              help="How long --wait waits, in seconds (env DANCE_WAIT_TIMEOUT_S; default 3600).")
@json_option
def submit(request_file: Path | None, job_id: str | None, queue: str | None, priority: int | None,
           timeout_s: float | None, callback_url: str | None, wait: bool, wait_timeout_s: float | None,
           as_json: bool, **fields: Any) -> None:
    """Enqueue a dance job and print its id (or, with --wait, its result)."""
    request = _read_request(request_file, as_json)
    request.update({name: value for name, value in fields.items() if value is not None})

    def go(client: DanceClient) -> None:
        handle = client.submit(request, job_id=job_id, queue=queue, priority=priority, timeout_s=timeout_s,
                               callback_url=callback_url)
        if not wait:
            click.echo(json.dumps({"job_id": handle.id, "status": handle.status()}) if as_json else handle.id)
            return
        click.echo(f"job {handle.id} submitted", err=True)
        _wait_and_print(handle, wait_timeout_s, as_json)

    run_client(as_json, go, job_id)


@main.command()
@click.argument("job_id")
@json_option
def status(job_id: str, as_json: bool) -> None:
    """Print a job's state and progress."""

    def go(client: DanceClient) -> None:
        handle = client.job(job_id)
        state, progress = handle.status(), handle.progress()
        if as_json:
            click.echo(json.dumps({"job_id": job_id, "state": state, "progress": progress}, ensure_ascii=False))
        else:
            click.echo(state + (f"  {describe_progress(progress)}" if progress else ""))
        if state == "UNKNOWN":
            sys.exit(EXIT_UNKNOWN_JOB)

    run_client(as_json, go, job_id)


@main.command()
@click.argument("job_id")
@click.option("--timeout", "timeout_s", type=float, default=0.0, show_default=True,
              help="Seconds to wait for a job that has not ended (0: do not wait).")
@json_option
def result(job_id: str, timeout_s: float, as_json: bool) -> None:
    """Print a job's result; exits non-zero if it failed, was cancelled or has not ended."""
    run_client(as_json, lambda client: _wait_and_print(client.job(job_id), timeout_s, as_json, quiet=True), job_id)


@main.command()
@click.argument("job_id")
@json_option
def cancel(job_id: str, as_json: bool) -> None:
    """Cancel a queued or running job (its ComfyUI prompt is interrupted)."""

    def go(client: DanceClient) -> None:
        state = client.job(job_id).cancel()
        click.echo(json.dumps({"job_id": job_id, "state": state}) if as_json else f"{job_id} {state}")

    run_client(as_json, go, job_id)


def _read_request(path: Path | None, as_json: bool) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        fail(error(REQUEST_NOT_OBJECT, f"{path} is not valid JSON: {exc}"), as_json)
    if not isinstance(body, dict):
        fail(error(REQUEST_NOT_OBJECT, f"{path} must hold a JSON object"), as_json)
    return body


def _wait_and_print(handle: JobHandle, timeout_s: float | None, as_json: bool, quiet: bool = False) -> None:
    line = ProgressLine(sys.stderr, enabled=not quiet)
    try:
        outcome = handle.result(timeout_s=timeout_s, on_progress=line.update)
    finally:
        line.close()
    if as_json:
        click.echo(json.dumps(outcome, indent=2, ensure_ascii=False))
        return
    for item in outcome.get("outputs", []):
        click.echo(f"{item['kind']}: {_local_path_or_url(item)}")
    click.echo(f"seed: {outcome.get('seed')}  total: {outcome.get('timings', {}).get('total_s')}s")


def _local_path_or_url(item: dict[str, Any]) -> str:
    uri = str(item.get("uri", ""))
    return uri.removeprefix("file://") if uri.startswith("file://") else str(item.get("url") or uri)


# Worker-side commands live in their own module: importing them pulls in the worker's dependencies.
def _register_worker_commands() -> None:
    from producer.worker_cli import check, worker
    from worker.models import models

    main.add_command(worker)
    main.add_command(check)
    main.add_command(models)


# Batches and operators' commands live in their own modules, which import this one for its helpers.
def _register_ops_commands() -> None:
    from producer.batch_cli import batch, batch_status
    from producer.ops_cli import assets_group, cluster, flower, gateway, hooks_worker

    for command in (batch, batch_status, cluster, assets_group, hooks_worker, flower, gateway):
        main.add_command(command)


_register_worker_commands()
_register_ops_commands()

__all__ = ["EXIT_BROKER", "EXIT_CANCELLED", "EXIT_JOB_FAILED", "EXIT_OK", "EXIT_TIMEOUT", "EXIT_UNKNOWN_JOB",
           "EXIT_USAGE", "exit_code_for", "fail", "json_option", "main", "run_client"]

if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

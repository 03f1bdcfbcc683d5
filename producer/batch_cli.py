"""``dance batch`` and ``dance batch-status``: batches from a JSONL or CSV file, followed from anywhere."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from producer.batch import BatchHandle, BatchSummary
from producer.batchfile import default_batch_id, read_batch_file
from producer.cli_support import EXIT_CANCELLED, EXIT_JOB_FAILED, EXIT_OK, json_option, run_client
from producer.client import DanceClient
from producer.views import BatchProgress, summary_table


def exit_code_for_summary(summary: BatchSummary) -> int:
    """0 when every job succeeded, 1 when any failed, 5 when some were cancelled and none failed."""
    if summary.counts["failed"]:
        return EXIT_JOB_FAILED
    if summary.counts["cancelled"]:
        return EXIT_CANCELLED
    return EXIT_OK


def _print(summary: BatchSummary, as_json: bool) -> None:
    click.echo(json.dumps(summary.as_dict()) if as_json else summary_table(summary))


@click.command("batch")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch-id", help="Default: <file name>-<hash of its bytes>. Rerunning a batch id submits only the "
              "jobs not yet submitted.")
@click.option("--callback-url", help="Gets one signed webhook when every job of the batch has ended.")
@click.option("--queue", envvar="DANCE_QUEUE", help="Queue for rows that name none (env DANCE_QUEUE).")
@click.option("--priority", type=int, help="Priority for rows that name none: 0 runs first, 9 last (default 5).")
@click.option("--timeout", "timeout_s", type=float, help="Execution deadline for rows that name none, in seconds.")
@click.option("--wait", is_flag=True, help="Wait until every job ended, showing progress, then print the summary.")
@click.option("--wait-timeout", "wait_timeout_s", type=float, envvar="DANCE_WAIT_TIMEOUT_S",
              help="How long --wait waits, in seconds (env DANCE_WAIT_TIMEOUT_S; default 3600).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write one JSON line per job (job_id, status, result or error) to this file.")
@json_option
def batch(file: Path, batch_id: str | None, callback_url: str | None, queue: str | None, priority: int | None,
          timeout_s: float | None, wait: bool, wait_timeout_s: float | None, out: Path | None, as_json: bool) -> None:
    """Submit one job per line (JSONL) or row (CSV) of FILE; print the batch id and a summary."""

    def go(client: DanceClient) -> None:
        items = read_batch_file(file)
        progress = BatchProgress(sys.stderr)
        try:
            handle = client.submit_batch(
                items, batch_id=batch_id or default_batch_id(file), callback_url=callback_url, queue=queue,
                priority=priority, timeout_s=timeout_s, on_submitted=progress.submitted,
            )
        finally:
            progress.close()
        report = handle.report
        if report is not None:
            click.echo(f"batch {handle.id}: {report.published} submitted now, {report.already_submitted} "
                       "submitted before", err=True)
        summary = _wait(handle, wait_timeout_s, progress, out) if wait else handle.summary()
        if out is not None and not wait:
            handle.write_results(out)
        _print(summary, as_json)
        sys.exit(exit_code_for_summary(summary) if wait else EXIT_OK)

    run_client(as_json, go)


def _wait(handle: BatchHandle, timeout_s: float | None, progress: BatchProgress, out: Path | None) -> BatchSummary:
    try:
        return handle.wait(timeout_s, on_summary=progress.summary)
    finally:
        progress.close()
        if out is not None:
            handle.write_results(out)  # also when waiting ran out: what has ended is worth keeping


@click.command("batch-status")
@click.argument("batch_id")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write one JSON line per job (job_id, status, result or error) to this file.")
@json_option
def batch_status(batch_id: str, out: Path | None, as_json: bool) -> None:
    """Show a batch's summary (from any machine that reaches the broker)."""

    def go(client: DanceClient) -> None:
        handle = client.batch(batch_id)
        summary = handle.summary()
        if out is not None:
            handle.write_results(out)
        _print(summary, as_json)

    run_client(as_json, go)

"""What every ``dance`` subcommand shares: the exit codes, turning errors into exits, the --json option.

Kept apart from :mod:`producer.cli` so that subcommands defined in other modules can use it without
importing the command group itself.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from producer.client import DanceClient
from producer.errors import (
    BATCH_UNKNOWN,
    BROKER_UNREACHABLE,
    JOB_CANCELLED,
    JOB_UNKNOWN,
    JOB_WAIT_TIMEOUT,
    ConfigInvalid,
    DanceError,
    InvalidRequest,
)
from producer.settings import ProducerSettings

EXIT_OK = 0  #: the command did what was asked; with --wait, the job succeeded
EXIT_JOB_FAILED = 1  #: the job ended FAILURE (the error's code is printed)
EXIT_USAGE = 2  #: bad options, an invalid request or an invalid setting; nothing was submitted
EXIT_TIMEOUT = 3  #: waiting ran out of time; the job may still be queued or running
EXIT_BROKER = 4  #: the broker (Redis) could not be reached
EXIT_CANCELLED = 5  #: the job was cancelled
EXIT_UNKNOWN_JOB = 6  #: no job (or batch) with that id exists (or its result expired)

_EXIT_BY_CODE = {BROKER_UNREACHABLE: EXIT_BROKER, JOB_WAIT_TIMEOUT: EXIT_TIMEOUT,
                 JOB_CANCELLED: EXIT_CANCELLED, JOB_UNKNOWN: EXIT_UNKNOWN_JOB, BATCH_UNKNOWN: EXIT_UNKNOWN_JOB}


def exit_code_for(exc: DanceError) -> int:
    if exc.code in _EXIT_BY_CODE:
        return _EXIT_BY_CODE[exc.code]
    if isinstance(exc, InvalidRequest | ConfigInvalid):
        return EXIT_USAGE
    return EXIT_JOB_FAILED


def fail(exc: DanceError, as_json: bool, job_id: str | None = None) -> NoReturn:
    if as_json:
        status = "cancelled" if exc.code == JOB_CANCELLED else "failed"
        click.echo(json.dumps({"job_id": job_id, "status": status, "error": exc.as_dict()}, ensure_ascii=False))
    click.echo(f"error: {exc}", err=True)
    sys.exit(exit_code_for(exc))


def run_client(as_json: bool, action: Callable[[DanceClient], Any], job_id: str | None = None) -> Any:
    try:
        with DanceClient(ProducerSettings.from_env()) as client:
            return action(client)
    except DanceError as exc:
        fail(exc, as_json, job_id)


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")



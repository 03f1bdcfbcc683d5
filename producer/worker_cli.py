"""``dance worker`` and ``dance check``: the worker-side commands of the CLI.

They import the worker lazily, so producers without the worker extra can still run ``dance submit``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

import click

from producer.cli_support import EXIT_USAGE
from producer.errors import DanceError

#: Celery node name of a worker started by ``dance worker``; %h is the host name.
DEFAULT_WORKER_NAME = "dance@%h"
#: Timeout of the health check's Redis calls, in seconds.
CHECK_TIMEOUT_S = 3.0
EXIT_HEALTHY = 0  #: the worker is ready and consuming
EXIT_UNHEALTHY = 1  #: the worker is absent, waiting for ComfyUI, warming up, or not consuming


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--name", "-n", envvar="DANCE_WORKER_NAME", default=DEFAULT_WORKER_NAME, show_default=True,
              help="Celery node name (env DANCE_WORKER_NAME).")
@click.option("--queues", "-Q", envvar="DANCE_QUEUES",
              help="Comma-separated queues (env DANCE_QUEUES; default 'dance').")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(name: str, queues: str | None, loglevel: str, celery_args: tuple[str, ...]) -> None:
    """Start a readiness-gated worker (extra arguments go to `celery worker`)."""
    if queues:
        os.environ["DANCE_QUEUES"] = queues
    from worker.settings import WorkerSettings

    exec_celery_worker(WorkerSettings.from_env, "worker.app", ["-n", name, "--loglevel", loglevel, *celery_args])


def exec_celery_worker(check_settings: Callable[[], object], app: str, args: Sequence[str]) -> NoReturn:
    """Replace this process with ``celery -A app worker args``, once the settings are known to be valid:
    an invalid one fails here with its code and exit status 2, not in a Celery traceback."""
    try:
        check_settings()
    except DanceError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", app, "worker", *args])


@click.command()
@click.option("--name", "-n", envvar="DANCE_WORKER_NAME", default=DEFAULT_WORKER_NAME, show_default=True,
              help="Node name of the worker to check (env DANCE_WORKER_NAME).")
@click.option("--json", "as_json", is_flag=True)
def check(name: str, as_json: bool) -> None:
    """Exit 0 if the worker is live, ready and consuming, 1 otherwise (for a Docker HEALTHCHECK)."""
    import redis
    from celery.utils.nodenames import default_nodename, host_format

    from producer import keys
    from producer.redisurl import redis_client
    from producer.settings import ProducerSettings

    node = host_format(default_nodename(name))
    settings = ProducerSettings.from_env()
    try:
        client = redis_client(settings.broker_url, settings.sentinel_master, socket_timeout=CHECK_TIMEOUT_S,
                              socket_connect_timeout=CHECK_TIMEOUT_S)
        raw = client.get(keys.worker_liveness(node))
    except redis.RedisError as exc:
        _report(node, False, f"broker unreachable: {exc}", None, as_json)
        return
    if raw is None:
        _report(node, False, "no liveness record (worker down, stalled or never started)", None, as_json)
        return
    record = json.loads(raw)
    if not record.get("ready") and record.get("warming"):
        _report(node, False, "warming up (running the workflow once before taking jobs)", record, as_json)
    elif not record.get("ready"):
        _report(node, False, "waiting for ComfyUI", record, as_json)
    elif not record.get("consuming"):
        _report(node, False, "ready but not consuming from its queues", record, as_json)
    else:
        _report(node, True, f"ready, consuming {','.join(record.get('queues', []))}", record, as_json)


def _report(node: str, healthy: bool, reason: str, record: dict[str, object] | None, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"worker": node, "healthy": healthy, "reason": reason, "record": record}))
    else:
        age = f" (updated {time.time() - float(str(record['updated_at'])):.0f}s ago)" if record else ""
        click.echo(f"{node}: {'healthy' if healthy else 'unhealthy'}: {reason}{age}")
    sys.exit(EXIT_HEALTHY if healthy else EXIT_UNHEALTHY)

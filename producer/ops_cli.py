"""``dance cluster``, ``dance assets sweep``, ``dance hooks-worker``, ``dance flower`` and ``dance gateway``: the
operators' commands.

``cluster`` needs only the broker, ``assets sweep`` the broker and the storage; ``gateway`` imports the
gateway extra only when it runs. The other two start worker-side processes and import nothing of the
worker until they run, so producers without the worker extra keep a working ``dance``; ``flower`` needs
only the flower extra (it watches through :mod:`worker.telemetry.flowerapp`, not the GPU worker's app).
"""

from __future__ import annotations

import importlib.util
import json
import os

import click

from producer.cli_support import fail, json_option, run_client
from producer.client import DanceClient
from producer.clusterview import DEFAULT_INSPECT_TIMEOUT_S, cluster_view
from producer.errors import DanceError
from producer.ledger import HOOKS_QUEUE
from producer.views import cluster_table
from producer.worker_cli import exec_celery_worker

#: Celery node name of a hooks worker started by ``dance hooks-worker``.
DEFAULT_HOOKS_WORKER_NAME = "hooks@%h"


@click.command("cluster")
@click.option("--inspect-timeout", "inspect_timeout_s", type=float, default=DEFAULT_INSPECT_TIMEOUT_S,
              show_default=True, help="Seconds to wait for workers' inspect replies (0: skip the broadcast).")
@json_option
def cluster(inspect_timeout_s: float, as_json: bool) -> None:
    """Show workers (ready, busy, GPU, current job), queue depths per priority and the job rate."""

    def go(client: DanceClient) -> None:
        view = cluster_view(client, inspect_timeout_s)
        click.echo(json.dumps(view.as_dict(), ensure_ascii=False) if as_json else cluster_table(view))

    run_client(as_json, go)


@click.group("assets")
def assets_group() -> None:
    """Look after the asset store (the blobs under assets/blake3/ in DANCE_STORAGE_URL)."""


@assets_group.command("sweep")
@json_option
def assets_sweep(as_json: bool) -> None:
    """Delete the blobs whose every asset expired, and print how many were looked at, kept and swept.

    The broker is CELERY_BROKER_URL and the storage DANCE_STORAGE_URL, as the gateway reads them. Safe
    beside running gateways, uploads and deletes, and beside another sweep.
    """
    from producer.asset_sweep import sweep
    from worker.storage import open_storage

    def go(client: DanceClient) -> None:
        storage = open_storage(client.settings.storage_url)
        client._guard(client.redis.ping)  # an unreachable broker fails the sweep even when storage holds no blob
        report = client._guard(lambda: sweep(client.redis, storage))
        if as_json:
            click.echo(json.dumps(report.as_dict()))
            return
        click.echo(f"looked at {report.looked_at} blobs: {report.kept} kept, {report.swept} swept "
                   f"({report.bytes_freed} bytes freed), {report.busy} being deleted elsewhere, "
                   f"{report.deferred} left for the next sweep")

    run_client(as_json, go)


@click.command("hooks-worker", context_settings={"ignore_unknown_options": True})
@click.option("--name", "-n", default=DEFAULT_HOOKS_WORKER_NAME, show_default=True, help="Celery node name.")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def hooks_worker(name: str, loglevel: str, celery_args: tuple[str, ...]) -> None:
    """Start the worker that sends webhooks and records batch completions (no GPU, no ComfyUI)."""
    from worker.hooks.settings import HooksSettings

    exec_celery_worker(HooksSettings.from_env, "worker.hooks.app",
                       ["-n", name, "-Q", HOOKS_QUEUE, "--loglevel", loglevel, *celery_args])


@click.command("flower", context_settings={"ignore_unknown_options": True})
@click.option("--no-auth", is_flag=True,
              help="Serve without authentication although Flower listens beyond loopback (not recommended).")
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(no_auth: bool, flower_args: tuple[str, ...]) -> None:
    """Start Flower with the dance metrics on its /metrics (other arguments go to `celery flower`).

    Flower options take `--opt value` or `--opt=value`. Without --basic-auth (or FLOWER_BASIC_AUTH) Flower
    starts only on a loopback --address; /metrics needs the same login as the pages.
    """
    from producer.flowerargs import flower_argv

    spec = importlib.util.find_spec("worker.telemetry.flowerconfig")  # located, not run: Flower runs it
    if spec is None or spec.origin is None:
        raise click.ClickException("worker.telemetry.flowerconfig is missing from this installation")
    try:
        argv = flower_argv(flower_args, os.environ, no_auth, spec.origin)
    except DanceError as exc:
        fail(exc, as_json=False)
    os.execv(argv[0], argv)


@click.command("gateway")
@click.option("--host", envvar="DANCE_GATEWAY_HOST", help="Address to listen on (env DANCE_GATEWAY_HOST; "
              "default 127.0.0.1; beyond loopback only with API keys).")
@click.option("--port", type=int, envvar="DANCE_GATEWAY_PORT", help="TCP port (env DANCE_GATEWAY_PORT; default 8188).")
def gateway(host: str | None, port: int | None) -> None:
    """Serve the HTTP gateway: Comfy API v2 and the old endpoint's /v2/{endpoint}/... routes.

    Keys come from DANCE_GATEWAY_KEYS_FILE and DANCE_GATEWAY_API_KEYS; exits 2 (gateway.bind_refused)
    when asked to listen beyond loopback without any.
    """
    import dataclasses
    import logging

    try:
        from gateway.app import run_gateway
        from gateway.settings import GatewaySettings
    except ImportError as exc:
        raise click.ClickException(f"dance gateway needs the gateway extra: pip install 'xicon-dance[gateway]' "
                                   f"({exc.name} is missing)") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = GatewaySettings.from_env()
        run_gateway(dataclasses.replace(settings, host=host or settings.host, port=port or settings.port))
    except DanceError as exc:
        fail(exc, as_json=False)


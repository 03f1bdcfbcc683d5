"""Who may reach Flower: both option spellings, no open Flower beyond loopback, /metrics behind the login.

Real `dance flower` processes on loopback, real HTTP; the exposure rule is also checked as the pure
function it is, for the addresses a test may not bind.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

from producer.cli_support import EXIT_USAGE
from producer.errors import FLOWER_AUTH_REQUIRED, DanceError
from producer.flowerargs import check_exposure
from tests.fixtures.workers import Cluster
from tests.support.browser import launch_flower
from tests.support.processes import free_port, port_accepts

#: How long one HTTP call to Flower may take, in seconds.
HTTP_TIMEOUT_S = 10
LOGIN = ("user", "password")


def get(port: int, path: str, auth: tuple[str, str] | None = None) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}{path}", auth=auth, timeout=HTTP_TIMEOUT_S)


def broker_env(cluster: Cluster) -> dict[str, str]:
    return {"CELERY_BROKER_URL": cluster.broker_url, "CELERY_RESULT_BACKEND": cluster.broker_url}


@pytest.mark.parametrize("spelling", ["apart", "joined"])
def test_dance_flower_takes_option_values_apart_or_joined_and_asks_for_the_login(
    cluster: Cluster, spelling: str
) -> None:
    # Given the README's command line, with its values apart (`--port 5555`) or joined (`--port=5555`)
    port = free_port()
    pairs = [("--port", str(port)), ("--address", "127.0.0.1"), ("--basic-auth", "user:password")]
    args = [part for name, value in pairs for part in (name, value)] if spelling == "apart" else \
        [f"{name}={value}" for name, value in pairs]
    # When it starts
    launch_flower(cluster, args, port, broker_env(cluster))
    # Then it serves its pages on that port to the login, and only to it
    assert get(port, "/workers", LOGIN).status_code == 200
    assert get(port, "/workers").status_code == 401
    assert get(port, "/workers", ("user", "wrong")).status_code == 401


def test_flower_metrics_answer_only_with_the_login_while_the_healthcheck_stays_open(cluster: Cluster) -> None:
    # Given Flower with basic auth
    port = free_port()
    launch_flower(cluster, [f"--port={port}", "--address=127.0.0.1", "--basic-auth=user:password"], port,
                  broker_env(cluster))
    # When a scraper asks for /metrics without the login, then with it
    anonymous, logged_in = get(port, "/metrics"), get(port, "/metrics", LOGIN)
    # Then the first is refused and the second gets Flower's and the dance series
    assert anonymous.status_code == 401 and "dance_" not in anonymous.text
    assert logged_in.status_code == 200 and "dance_queue_messages" in logged_in.text
    assert "flower_events_total" in logged_in.text or "# HELP" in logged_in.text
    # and the health check (which says nothing but OK) still answers the compose health probe
    assert get(port, "/healthcheck").text == "OK"


@pytest.mark.parametrize("how", ["no address", "FLOWER_ADDRESS=0.0.0.0"])
def test_dance_flower_refuses_to_listen_beyond_loopback_without_authentication(cluster: Cluster, how: str) -> None:
    # Given no authentication, and Flower's default address (every interface) or one from the environment
    port = free_port()
    env = {**os.environ, **broker_env(cluster)}
    for name in ("FLOWER_BASIC_AUTH", "FLOWER_AUTH", "FLOWER_ADDRESS", "FLOWER_UNIX_SOCKET"):
        env.pop(name, None)
    if how != "no address":
        env["FLOWER_ADDRESS"] = "0.0.0.0"
    # When an operator starts it
    done = subprocess.run([sys.executable, "-m", "producer.cli", "flower", "--port", str(port)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    # Then it exits with the usage code and the error's code, and nothing listens
    assert done.returncode == EXIT_USAGE, done.stderr
    assert f"[{FLOWER_AUTH_REQUIRED}]" in done.stderr and "--basic-auth" in done.stderr
    assert not port_accepts(port)


def test_a_loopback_flower_without_authentication_starts_and_serves_its_metrics_openly(cluster: Cluster) -> None:
    # Given no authentication but a loopback address
    port = free_port()
    assert not {"FLOWER_BASIC_AUTH", "FLOWER_AUTH"} & set(os.environ)
    # When it starts
    launch_flower(cluster, ["--port", str(port), "--address", "127.0.0.1"], port, broker_env(cluster))
    # Then it serves pages and metrics to anyone who can reach loopback
    assert get(port, "/workers").status_code == 200
    assert "dance_queue_messages" in get(port, "/metrics").text


@pytest.mark.parametrize("args,environ,no_auth,allowed", [
    (["--address=0.0.0.0"], {}, True, True),
    ([], {}, True, True),
    (["--address=0.0.0.0", "--basic-auth=a:b"], {}, False, True),
    (["--address=0.0.0.0"], {"FLOWER_BASIC_AUTH": "a:b"}, False, True),
    (["--address=0.0.0.0", "--auth=.*@example\\.com"], {}, False, True),
    (["--unix-socket=/run/flower.sock"], {}, False, True),
    (["--address=::1"], {}, False, True),
    (["--address=localhost"], {}, False, True),
    (["--address=10.0.0.5"], {}, False, False),
    (["--address=flower.internal"], {}, False, False),
    (["--address=127.0.0.1", "--address=0.0.0.0"], {}, False, False),
    (["--basic-auth="], {"FLOWER_ADDRESS": "0.0.0.0"}, False, False),
])
def test_the_exposure_rule_allows_auth_loopback_a_socket_or_an_explicit_no_auth(
    args: list[str], environ: dict[str, str], no_auth: bool, allowed: bool
) -> None:
    # Given a Flower command line and environment
    # When the rule checks it
    try:
        check_exposure(args, environ, no_auth)
        refused = None
    except DanceError as exc:
        refused = exc.code
    # Then it refuses exactly the unauthenticated Flowers that listen beyond loopback
    assert refused == (None if allowed else FLOWER_AUTH_REQUIRED)

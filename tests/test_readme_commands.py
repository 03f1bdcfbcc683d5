"""Every command line in the READMEs' shell blocks works as shown.

The lines are read from the fenced ``sh`` blocks of README.md and docker/README.md, never copied here.
`dance` commands that end run against a real cluster (Redis, a worker, the simulator) in a folder holding
the files they name; `dance flower` starts and serves to the login it was given, then stops; commands
that run forever or need the outside world (`dance worker`, `dance hooks-worker`, `dance models`,
`dance gateway`) get ``--help`` appended, which still fails on any option the command does not have or that
lacks its value.
`make` targets are dry-run; docker lines, which need an engine, are checked against the compose files,
and the `dance`/`celery` command a container runs gets the ``--help`` treatment. A documented line that no
rule here covers fails the test, so a new one cannot go untried.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from producer.cli_support import EXIT_OK, EXIT_USAGE
from producer.errors import FLOWER_AUTH_REQUIRED
from tests.fixtures.workers import Cluster
from tests.support.browser import launch_flower
from tests.support.jobs import dance_request, sample_media
from tests.support.processes import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
READMES = (ROOT / "README.md", ROOT / "docker" / "README.md")
FENCE = re.compile(r"^\s*```(sh|bash|shell)\s*$\n(.*?)^\s*```\s*$", re.MULTILINE | re.DOTALL)
#: Synopsis placeholders and the values the cluster run gives them.
JOB_ID = "order-1234"
#: Commands that would run forever or fetch from the internet: only their command line is checked.
HELP_ONLY = {"worker", "hooks-worker", "models", "gateway"}
#: How long one command may take, in seconds (a --wait includes a job on the simulator).
COMMAND_TIMEOUT_S = 90


def documented_lines() -> list[list[str]]:
    """Each command of the shell blocks as argv; a synopsis line holding several `dance` commands is split."""
    commands = []
    for readme in READMES:
        for _, block in FENCE.findall(readme.read_text()):
            # A line ending in a backslash continues on the next one, as in the shell.
            for line in block.replace("\\\n", " ").splitlines():
                for part in re.split(r"\s{2,}(?=dance )", line.strip()):
                    argv = shlex.split(part, comments=True)
                    if argv:
                        commands.append(argv)
    return commands


def synopsis_to_argv(argv: list[str], values: dict[str, str]) -> list[str]:
    """Optional ``[--opt VALUE]`` groups taken, ``[… options…]`` dropped, placeholders given values."""
    out: list[str] = []
    group: list[str] | None = None
    for raw in argv:
        if raw.startswith("["):
            group = []
        closing, word = raw.endswith("]"), raw.strip("[]")
        (out if group is None else group).append(values.get(word, word))
        if closing and group is not None:
            out.extend([] if any("…" in w for w in group) else group)
            group = None
    return out


def dance(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "producer.cli", *args], cwd=cwd, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)


def until_healthy(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`dance check` once it exits 0: the worker ran the jobs above, and may report consuming only a moment later."""
    def healthy() -> subprocess.CompletedProcess[str] | None:
        done = dance(args, cwd, env)
        return done if done.returncode == EXIT_OK else None

    return wait_until(healthy, 30, "dance check to find the worker consuming")  # type: ignore[return-value]


def by_tool(tool: str, subcommands: set[str] | None = None) -> list[list[str]]:
    lines = [argv for argv in documented_lines() if argv[0] == tool]
    return [argv for argv in lines if subcommands is None or argv[1] in subcommands]


def test_every_documented_command_line_is_covered_by_a_rule_here() -> None:
    # Given the shell lines of both READMEs
    lines = documented_lines()
    # Then each starts with a tool this module knows how to try, and the README's Flower line is among them
    # (curl lines and the variables they use are run against a real gateway in tests/gateway/test_readme_curl.py)
    tools = {argv[0] for argv in lines if not re.fullmatch(r"[A-Z]+=\S*", argv[0])}
    assert tools <= {"dance", "make", "cp", "docker", "curl"}, lines
    assert ["dance", "flower", "--port", "5555", "--address", "127.0.0.1", "--basic-auth=user:password"] in lines


def test_the_documented_dance_commands_that_end_work_against_a_real_cluster(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a worker on the simulator and a folder with every file the commands name
    cluster.start_worker("w", comfysim(exec_s=0.05).url)
    request = dance_request(media_server, tmp_path, steps=2)
    image, video = sample_media(tmp_path)
    (tmp_path / "alice.png").write_bytes(image)
    (tmp_path / "salsa.mp4").write_bytes(video)
    for name in ("body.json", "job.json"):
        (tmp_path / name).write_text(json.dumps(request))
    (tmp_path / "jobs.jsonl").write_text("".join(json.dumps({**request, "seed": n}) + "\n" for n in range(2)))
    env = {"CELERY_BROKER_URL": cluster.broker_url, "DANCE_STORAGE_URL": cluster.storage_url,
           "DANCE_WAIT_TIMEOUT_S": "60"}
    values = {"ID": JOB_ID, "S": "60", "NAME": "w@%h", "QUEUES": "dance", "FILE": "jobs.jsonl", "BATCH_ID": ""}
    runnable = [argv for argv in by_tool("dance") if argv[1] not in HELP_ONLY | {"flower"}]
    assert len(runnable) >= 10, runnable
    for documented in runnable:
        argv = synopsis_to_argv(documented, values)
        if argv[1] == "batch-status":  # the README's id is an example: use the batch just submitted
            argv[2] = values["BATCH_ID"]
        # When a user runs it as the README shows it
        done = until_healthy(argv[1:], tmp_path, env) if argv[1] == "check" else dance(argv[1:], tmp_path, env)
        # Then it succeeds
        assert done.returncode == EXIT_OK, (documented, done.stdout[-2000:], done.stderr[-2000:])
        if argv[1] == "batch":
            values["BATCH_ID"] = re.search(r"batch (\S+):", done.stdout + done.stderr).group(1)  # type: ignore[union-attr]
    assert (tmp_path / "results.jsonl").exists()


def test_the_documented_dance_flower_lines_serve_to_their_login_or_refuse_to_start_open(
    cluster: Cluster, tmp_path: Path
) -> None:
    env = {"CELERY_BROKER_URL": cluster.broker_url}
    lines = [synopsis_to_argv(argv, {}) for argv in by_tool("dance", {"flower"})]
    assert lines
    for argv in lines:
        login = next((a.split("=", 1)[1] for a in argv if a.startswith("--basic-auth=")), None)
        if login is None:
            # Given the bare synopsis: no login, Flower's default address (every interface)
            done = dance(argv[1:], tmp_path, env)
            # Then it refuses to start open, with its code
            assert done.returncode == EXIT_USAGE and FLOWER_AUTH_REQUIRED in done.stderr, done.stderr
            continue
        # Given a line with a login, on a free port instead of 5555 (the value stays apart if it was)
        port = free_port()
        given = argv[2:]
        args = [str(port) if prev == "--port" else re.sub(r"^--port=\d+$", f"--port={port}", a)
                for prev, a in zip(["", *given][:len(given)], given, strict=True)]
        # When it starts, Then it serves its pages to that login and to nobody else
        process = launch_flower(cluster, args, port, env)
        user, password = login.split(":", 1)
        assert requests.get(f"http://127.0.0.1:{port}/workers", auth=(user, password), timeout=10).status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/workers", timeout=10).status_code == 401
        process.stop()


@pytest.mark.parametrize("argv", [a for a in by_tool("dance") if a[1] in HELP_ONLY], ids=shlex.join)
def test_the_documented_long_running_dance_commands_accept_their_options(argv: list[str], tmp_path: Path) -> None:
    # When the line runs with --help (parsed in full first: an unknown option or a missing value fails)
    done = dance([*synopsis_to_argv(argv, {"NAME": "w@%h", "QUEUES": "dance"})[1:], "--help"], tmp_path, {})
    # Then click accepts it
    assert done.returncode == EXIT_OK, (argv, done.stderr)


@pytest.mark.parametrize("argv", by_tool("make"), ids=shlex.join)
def test_the_documented_make_targets_exist(argv: list[str]) -> None:
    done = subprocess.run(["make", "-n", "-C", str(ROOT), *argv[1:]], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr


def compose_command(argv: list[str]) -> tuple[dict[str, Any], str | None, str, list[str]]:
    """(the compose file, the profile, the subcommand, what follows it) of a ``docker compose`` line."""
    assert argv[:2] == ["docker", "compose"], argv
    rest, path, profile = argv[2:], ROOT / "compose.yaml", None
    while rest[0].startswith("-"):
        flag, value, rest = rest[0], rest[1], rest[2:]
        if flag == "-f":
            path = ROOT / value
        else:
            assert flag == "--profile", argv
            profile = value
    return yaml.safe_load(path.read_text()), profile, rest[0], rest[1:]


@pytest.mark.parametrize("argv", by_tool("docker") + by_tool("cp"), ids=shlex.join)
def test_the_documented_docker_lines_name_what_the_compose_files_hold(argv: list[str], tmp_path: Path) -> None:
    if argv[0] == "cp":
        assert (ROOT / argv[1]).is_file(), argv
        return
    compose, profile, sub, rest = compose_command(argv)
    services = compose["services"]
    if profile is not None:
        assert any(profile in spec.get("profiles", []) for spec in services.values()), argv
    if sub not in ("run", "exec", "stop"):
        assert sub in ("build", "up", "ps"), argv
        return
    options = len(list(itertools.takewhile(lambda arg: arg.startswith("-"), rest)))
    service, command = rest[options], rest[options + 1:]
    assert service in services, argv
    if command[:1] == ["dance"]:
        done = dance([*command[1:], "--help"], tmp_path, {})
    elif command[:1] == ["celery"]:
        done = subprocess.run([sys.executable, "-m", *command, "--help"], capture_output=True, text=True,
                              timeout=60, check=False)
    else:
        assert not command, argv
        return
    assert done.returncode == EXIT_OK, (argv, done.stderr[-2000:])

"""`make redis-server` and `make chromium` install what is missing, as root and as a user with sudo.

The recipes run for real under GNU make and bash, on a PATH that holds only recording stand-ins for
``apt-get``, ``sudo`` and ``id`` (plus the real ``env`` and ``git``), so redis-server and
chromium are missing whatever this machine has installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: How long one make run may take, in seconds (it only runs stand-ins).
MAKE_TIMEOUT_S = 60

#: Each stand-in appends one line: its name, then DEBIAN_FRONTEND, then its arguments.
RECORDER = """#!/bin/bash
printf '%s|%s|%s\\n' "{name}" "${{DEBIAN_FRONTEND-}}" "$*" >> "{log}"
"""
#: sudo records itself, then runs the command it was given, as the real one does.
SUDO = RECORDER + 'exec "$@"\n'
#: id answers `id -u` with the uid this run pretends to have.
ID = """#!/bin/bash
[ "$1" = -u ] && echo {uid}
"""


def stand_in_path(folder: Path, uid: int, log: Path, present: tuple[str, ...] = ()) -> Path:
    """A bin folder with the stand-ins, the real env, and the ``present`` programs as no-op scripts."""
    folder.mkdir()
    scripts = {"apt-get": RECORDER.format(name="apt-get", log=log), "sudo": SUDO.format(name="sudo", log=log),
               "id": ID.format(uid=uid)}
    scripts.update({name: "#!/bin/bash\n" for name in present})
    for name, text in scripts.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    # env runs in the recipes; git only in the Makefile's list of shell scripts to lint, read at parse time.
    for tool in ("env", "git"):
        real = shutil.which(tool)
        assert real, f"{tool} is missing"
        (folder / tool).symlink_to(real)
    return folder


def run_make(target: str, path: Path) -> subprocess.CompletedProcess[str]:
    make = shutil.which("make")
    assert make, "GNU make is missing"
    return subprocess.run([make, "--no-print-directory", "-C", str(ROOT), target], env={"PATH": str(path)},
                          capture_output=True, text=True, timeout=MAKE_TIMEOUT_S, check=False)


def recorded(log: Path) -> list[tuple[str, str, str]]:
    if not log.exists():
        return []
    return [(name, frontend, args) for name, frontend, args in
            (line.split("|", 2) for line in log.read_text().splitlines())]


@pytest.mark.parametrize("target,package", [("redis-server", "redis-server"), ("chromium", "chromium")])
def test_as_root_the_install_recipe_runs_apt_get_itself_noninteractively(
    tmp_path: Path, target: str, package: str
) -> None:
    # Given root (id -u answers 0) on a machine without the program, where sudo would be recorded if called
    log = tmp_path / "commands.log"
    path = stand_in_path(tmp_path / "bin", 0, log)
    # When make runs the install target
    done = run_make(target, path)
    # Then it updated the lists and installed the package with apt-get directly, non-interactively
    assert done.returncode == 0, done.stderr
    assert f"installing {package}" in done.stdout
    assert recorded(log) == [
        ("apt-get", "", "update -qq"),
        ("apt-get", "noninteractive", f"install -y -qq {package}"),
    ]


@pytest.mark.parametrize("target,package", [("redis-server", "redis-server"), ("chromium", "chromium")])
def test_as_a_user_the_install_recipe_runs_apt_get_through_sudo_noninteractively(
    tmp_path: Path, target: str, package: str
) -> None:
    # Given an ordinary user (id -u answers 1000) on a machine without the program
    log = tmp_path / "commands.log"
    path = stand_in_path(tmp_path / "bin", 1000, log)
    # When make runs the install target
    done = run_make(target, path)
    # Then each apt-get ran through sudo, and the install carried DEBIAN_FRONTEND past sudo with env
    assert done.returncode == 0, done.stderr
    assert recorded(log) == [
        ("sudo", "", "apt-get update -qq"),
        ("apt-get", "", "update -qq"),
        ("sudo", "", f"env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package}"),
        ("apt-get", "noninteractive", f"install -y -qq {package}"),
    ]


@pytest.mark.parametrize("target,program", [("redis-server", "redis-server"), ("chromium", "chromium"),
                                            ("chromium", "chromium-browser")])
def test_the_install_recipe_installs_nothing_when_the_program_is_there(
    tmp_path: Path, target: str, program: str
) -> None:
    # Given a user whose PATH already has the program
    log = tmp_path / "commands.log"
    path = stand_in_path(tmp_path / "bin", 1000, log, present=(program,))
    # When make runs the install target
    done = run_make(target, path)
    # Then neither sudo nor apt-get ran
    assert done.returncode == 0, done.stderr
    assert recorded(log) == [] and "installing" not in done.stdout

"""What each install really needs, in fresh virtual environments that hold only that install's packages.

The project is built once into a wheel (pip's isolated build fetches only setuptools, from its cache
when it has it) and installed with pip ``--no-deps --no-index``; its dependencies are the distributions
of this test run's own environment, copied with their metadata, and only those that the chosen
requirement (``xicon-dance`` alone, ``xicon-dance[flower]`` or ``xicon-dance[gateway]``) pulls in. So a
module the install lacks fails the test as it would fail a user.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from packaging.markers import default_environment
from packaging.requirements import Requirement

from producer.cli_support import EXIT_OK
from tests.support.jobs import sample_media
from tests.support.processes import ManagedProcess, free_port, port_accepts, wait_until

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "xicon-dance"
#: How long building the wheel or installing it may take, in seconds.
PIP_TIMEOUT_S = 180
#: How long one `dance` command may take, in seconds.
COMMAND_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(out), str(ROOT)], check=True, timeout=PIP_TIMEOUT_S, capture_output=True)
    return next(out.glob("xicon_dance-*.whl"))


def closure(requirement: str) -> set[str]:
    """The distributions ``requirement`` needs, transitively, with the extras it names (not the project)."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    pending = [Requirement(requirement)]
    while pending:
        req = pending.pop()
        environments = [{**default_environment(), "extra": extra} for extra in (req.extras or {""})]
        for line in importlib.metadata.requires(req.name) or []:
            child = Requirement(line)
            if child.marker is not None and not any(child.marker.evaluate(env) for env in environments):
                continue
            key = (child.name.lower(), tuple(sorted(child.extras)))
            if key not in seen:
                seen.add(key)
                pending.append(child)
    return {name for name, _ in seen if name != PROJECT}


def site_packages(env: Path) -> Path:
    return env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def fresh_env(folder: Path, wheel: Path, requirement: str) -> Path:
    """A new virtual environment holding the project and exactly what ``requirement`` pulls in."""
    venv.create(folder, with_pip=False)
    target = site_packages(folder)
    for name in closure(requirement):
        dist = importlib.metadata.distribution(name)
        for file in dist.files or []:
            if file.parts[0] == "..":  # console scripts outside site-packages: the tests call modules
                continue
            source, dest = Path(str(file.locate())), target / file
            if source.is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(folder / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=PIP_TIMEOUT_S, capture_output=True)
    return folder


def importable(env: Path, module: str) -> bool:
    probe = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    return subprocess.run([str(env / "bin" / "python"), "-I", "-c", probe], check=False).returncode == 0


def clean_environ(**extra: str) -> dict[str, str]:
    """The test's environment without what would let the fresh one see this checkout or its packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, **extra}


@pytest.fixture
def bare_env(tmp_path: Path, wheel: Path) -> Path:
    return fresh_env(tmp_path / "bare", wheel, PROJECT)


@pytest.fixture
def flower_env(tmp_path: Path, wheel: Path) -> Path:
    return fresh_env(tmp_path / "flower", wheel, f"{PROJECT}[flower]")


def test_the_bare_producer_submits_local_files_through_file_storage(
    bare_env: Path, redis_db: str, tmp_path: Path
) -> None:
    # Given `pip install xicon-dance` without extras (no botocore, no requests), local media and file:// storage
    assert importable(bare_env, "celery") and not importable(bare_env, "botocore")
    assert not importable(bare_env, "requests")
    image, video = sample_media(tmp_path)
    storage = tmp_path / "storage"
    # When a user submits the local files with the installed `dance`, from a folder outside the checkout
    done = subprocess.run(
        [str(bare_env / "bin" / "dance"), "submit", "--reference-image", "character.png",
         "--dance-video", "dance.mp4", "--prompt", "bare producer", "--job-id", "bare-1"],
        cwd=tmp_path, env=clean_environ(CELERY_BROKER_URL=redis_db, DANCE_STORAGE_URL=storage.as_uri()),
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    # Then it printed the job id, the files landed in storage byte for byte
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout.strip() == "bare-1"
    assert (storage / "bare-1" / "inputs" / "reference_image.png").read_bytes() == image
    assert (storage / "bare-1" / "inputs" / "dance_video.mp4").read_bytes() == video
    # and the job's message waits in the queue in Redis, naming the stored copies
    broker = redis.Redis.from_url(redis_db)
    messages = [json.loads(raw) for name in broker.keys("dance*") if broker.type(name) == b"list"
                for raw in broker.lrange(name, 0, -1)]
    assert [m["headers"]["id"] for m in messages] == ["bare-1"]
    assert (storage / "bare-1" / "inputs" / "reference_image.png").as_uri() in json.dumps(messages)


@pytest.fixture
def flower_process(flower_env: Path, redis_db: str, tmp_path: Path) -> Iterator[tuple[ManagedProcess, int]]:
    port = free_port()
    argv = [str(flower_env / "bin" / "dance"), "flower", "--port", str(port), "--address", "127.0.0.1",
            "--basic-auth", "user:password"]
    process = ManagedProcess("flower", argv, tmp_path / "flower.log", env=clean_environ(CELERY_BROKER_URL=redis_db),
                             cwd=tmp_path).start()
    try:
        yield process, port
    finally:
        process.stop()


def test_a_monitoring_host_with_only_the_flower_extra_runs_dance_flower(
    flower_env: Path, flower_process: tuple[ManagedProcess, int]
) -> None:
    # Given `pip install 'xicon-dance[flower]'`: Flower and the Prometheus client, but not the worker's packages
    assert importable(flower_env, "flower") and not importable(flower_env, "requests")
    assert not importable(flower_env, "botocore")
    process, port = flower_process

    # When `dance flower` starts there
    def up() -> bool:
        assert process.poll() is None, process.log()[-4000:]
        return port_accepts(port)

    wait_until(up, 60, "dance flower to listen")
    # Then it serves its pages and the dance series on /metrics to the login
    login = ("user", "password")
    assert requests.get(f"http://127.0.0.1:{port}/workers", auth=login, timeout=10).status_code == 200
    assert "dance_queue_messages" in requests.get(f"http://127.0.0.1:{port}/metrics", auth=login, timeout=10).text


def test_a_gateway_host_with_only_the_gateway_extra_serves_dance_gateway(
    tmp_path: Path, wheel: Path, redis_db: str
) -> None:
    # Given `pip install 'xicon-dance[gateway]'`: aiohttp, blake3, boto3, pyyaml, but not the worker's packages
    env = fresh_env(tmp_path / "gateway", wheel, f"{PROJECT}[gateway]")
    assert importable(env, "aiohttp") and importable(env, "yaml") and not importable(env, "requests")
    assert not importable(env, "av")
    # When `dance gateway` starts there
    port = free_port()
    process = ManagedProcess("gateway", [str(env / "bin" / "dance"), "gateway", "--port", str(port)],
                             tmp_path / "gateway.log", env=clean_environ(CELERY_BROKER_URL=redis_db),
                             cwd=tmp_path).start()
    try:
        def up() -> bool:
            assert process.poll() is None, process.log()[-4000:]
            return port_accepts(port)

        wait_until(up, 60, "dance gateway to listen")
        # Then it answers its health check and its API description
        assert requests.get(f"http://127.0.0.1:{port}/api/v2/health", timeout=10).json()["status"] == "healthy"
        assert "/v2/{endpoint}/run" in requests.get(f"http://127.0.0.1:{port}/api/v2/openapi.json", timeout=10).json()[
            "paths"]
    finally:
        process.stop()

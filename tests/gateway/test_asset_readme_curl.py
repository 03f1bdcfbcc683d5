"""Every curl line of the README's Assets section (under HTTP gateway) works as shown, against the asset
routes over real Redis and a real storage folder.

The lines are read from the section's block, never copied here. ``$GW`` and ``$KEY`` come from the
environment; ``HEX`` is the blake3 of the ``photo.png`` the first line uploads and ``ASSET_ID`` the asset
it makes. Each line must answer a 2xx; the ranged download must hold the file's first KiB.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
from blake3 import blake3

from tests.gateway.asset_app import ServedAssets, pattern, served_assets
from worker.storage import open_storage

ROOT = Path(__file__).resolve().parents[2]
#: Seconds one curl line may take.
CURL_TIMEOUT_S = 60
#: Size of the uploaded photo, in bytes (more than the 1 KiB range the README fetches).
PHOTO_BYTES = 5_000
#: Bytes the README's ranged download asks for (bytes=0-1023).
RANGE_BYTES = 1024
#: Upload cap of the served routes, in bytes.
MAX_UPLOAD_BYTES = 1 << 20


def section_lines() -> list[str]:
    """The curl lines of the README's Assets section, continuations joined, comments dropped."""
    readme = (ROOT / "README.md").read_text()
    section = re.split(r"\n##+ ", readme.split("\n### Assets\n", 1)[1], maxsplit=1)[0]
    block = section.split("```text\n", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ").splitlines()
    return [re.sub(r"\s+#.*$", "", line.strip()) for line in joined if line.strip().startswith("curl ")]


def run_curl(line: str, env: dict[str, str], cwd: Path) -> tuple[int, bytes]:
    """Run one line in bash with its output to body.out (replacing any -o of its own); status and body."""
    command = re.sub(r"\s-o\s+\S+", "", line) + " -o body.out -w '%{http_code}'"
    done = subprocess.run(["bash", "-c", command], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=CURL_TIMEOUT_S, check=False)
    assert done.returncode == 0, (line, done.stderr)
    return int(done.stdout.strip() or 0), (cwd / "body.out").read_bytes()


@pytest.fixture
def gateway(redis_db: str, tmp_path: Path) -> Iterator[ServedAssets]:
    client = redis_lib.Redis.from_url(redis_db)
    storage = open_storage((tmp_path / "store").as_uri())
    with served_assets(client, storage, tmp_path, max_upload_bytes=MAX_UPLOAD_BYTES) as served:
        yield served
    client.close()


def test_every_curl_line_of_the_assets_section_answers_2xx(gateway: ServedAssets, tmp_path: Path) -> None:
    # Given the photo the lines name, and its blake3
    work = tmp_path / "work"
    work.mkdir()
    photo = pattern(PHOTO_BYTES)
    (work / "photo.png").write_bytes(photo)
    hex_digest = blake3(photo).hexdigest()
    env = {"GW": gateway.base_url, "KEY": "unused-without-keys", "PATH": "/usr/bin:/bin"}
    upload, *others = section_lines()
    assert len(others) >= 4, others
    # When the upload line runs, Then it makes the asset the other lines name
    status, body = run_curl(upload.replace("HEX", hex_digest), env, work)
    assert status == 201, body
    asset_id = json.loads(body)["id"]
    # And every other line, in order, answers 2xx; the ranged download holds the first KiB
    for line in others:
        status, body = run_curl(line.replace("HEX", hex_digest).replace("ASSET_ID", asset_id), env, work)
        assert 200 <= status < 300, (line, status, body)
        if "Range:" in line:
            assert (status, body) == (206, photo[:RANGE_BYTES])

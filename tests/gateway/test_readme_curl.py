"""Every curl line of the README's gateway section works as shown, against a real gateway and worker.

The lines are read from README.md's shell blocks, never copied here. ``$GW`` and ``$KEY`` come from the
environment the README's first line sets; ``JOB_ID``, ``WORKFLOW_JOB_ID`` and ``ENDPOINT`` are placeholders, and the ``https://…``
media of the inline body are the test media server's; ``workflow-body.json`` holds a workflow on an image
asset of the key. Each line must answer a 2xx.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import redis

from producer import capabilities
from tests.fixtures.workers import Cluster
from tests.gateway.conftest import ALICE_KEY, StartGateway
from tests.gateway.test_v2_submit import alice_image, invert_workflow
from tests.support.jobs import dance_request
from tests.support.processes import wait_until
from tests.test_readme_commands import FENCE, ROOT

#: Seconds one curl line may take (the events stream ends with the job, which has ended by then).
CURL_TIMEOUT_S = 60


def curl_lines() -> list[str]:
    """The README's curl lines as written (quoting kept: bash expands their variables), continuations joined."""
    lines = []
    for _, block in FENCE.findall((ROOT / "README.md").read_text()):
        lines += [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.startswith("curl ")]
    return lines


def run_curl(line: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run one README line in bash; the HTTP status and the body."""
    done = subprocess.run(["bash", "-c", f"{line} -o body.out -w '%{{http_code}}'"], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=CURL_TIMEOUT_S, check=False)
    assert done.returncode == 0, (line, done.stderr)
    return int(done.stdout.strip() or 0), (cwd / "body.out").read_text()


def test_every_documented_curl_line_answers_2xx_against_a_real_gateway(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path, start_gateway: StartGateway
) -> None:
    # Given a worker, a gateway, and the files the lines name
    sim = comfysim(exec_s=0.05)
    cluster.start_worker("w", sim.url, COMFYUI_INPUT_DIR=str(sim.data_dir / "input"),
                         COMFYUI_OUTPUT_DIR=str(sim.data_dir / "output"))
    gateway = start_gateway()
    request = dance_request(media_server, tmp_path, steps=2)
    (tmp_path / "body.json").write_text(json.dumps({"input": request}))
    env = {"GW": gateway.url, "KEY": ALICE_KEY, "PATH": "/usr/bin:/bin"}
    assert "GW=http://127.0.0.1:8188 KEY=" in (ROOT / "README.md").read_text()
    image = alice_image(cluster, tmp_path)
    (tmp_path / "workflow-body.json").write_text(json.dumps({"workflow": invert_workflow(image.id)}))
    broker = redis.Redis.from_url(cluster.broker_url)
    wait_until(lambda: not capabilities.missing_for(broker, "dance", {}).no_workers, 60,
               "the worker to publish its capabilities")
    lines = curl_lines()
    assert len(lines) >= 12, lines
    # When the /run line runs first (its id is the JOB_ID of the others), and its job is done
    run = next(line for line in lines if "/run " in line)
    media = {"https://…/alice.png": request["reference_image"], "https://…/salsa.mp4": request["dance_video"]}
    for placeholder, url in media.items():
        run = run.replace(placeholder, url)
    status, body = run_curl(run.replace("ENDPOINT", "ep").split(" # ")[0], env, tmp_path)
    assert status == 200, body
    job_id = json.loads(body)["id"]
    wait_until(lambda: gateway.call("GET", f"/api/v2/jobs/{job_id}").json()["status"] == "succeeded", 60,
               "the job to succeed")
    # Then every other line, as written, answers 2xx (WORKFLOW_JOB_ID: the job the v2 submit line made)
    workflow_job_id = "no v2 job submitted yet"
    for line in lines:
        if line is not run and "/run " not in line:
            command = re.sub(r"\s+#.*$", "", line).replace("ENDPOINT", "ep").replace("WORKFLOW_JOB_ID", workflow_job_id)
            status, body = run_curl(command.replace("JOB_ID", job_id), env, tmp_path)
            assert 200 <= status < 300, (line, status, body)
            if "-X POST $GW/api/v2/jobs " in line:
                workflow_job_id = json.loads(body)["id"]

"""The old deployment guide's flow, with the real curl binary: ``/run`` with the old body, then ``/status/{id}``
polled until ``COMPLETED``, the result under ``output``. The two lines are the README's own, as written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, cast

from tests.fixtures.workers import Cluster
from tests.gateway.conftest import ALICE_KEY, StartGateway
from tests.gateway.test_readme_curl import curl_lines, run_curl
from tests.support.jobs import dance_request
from tests.support.processes import wait_until

#: The old API's states a job passes through before it completes.
ON_THE_WAY = {"IN_QUEUE", "IN_PROGRESS"}


def readme_line(route: str) -> str:
    """The README's one curl line for ``route``, without its trailing comment."""
    [line] = [line for line in curl_lines() if f"/v2/ENDPOINT/{route} " in line]
    return re.sub(r"\s+#.*$", "", line)


def test_the_old_run_then_status_polling_flow_works_with_curl_and_the_old_body(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path, start_gateway: StartGateway
) -> None:
    # Given a worker, a gateway, and the README's /run and /status lines with the old body {"input": {...}}
    assert shutil.which("curl", path="/usr/bin:/bin") is not None
    sim = comfysim(exec_s=0.5)
    cluster.start_worker("w", sim.url)
    gateway = start_gateway()
    env = {"GW": gateway.url, "KEY": ALICE_KEY, "PATH": "/usr/bin:/bin"}
    request = dance_request(media_server, tmp_path, steps=2)
    run = readme_line("run").replace("ENDPOINT", "ep")
    for placeholder, url in (("https://…/alice.png", request["reference_image"]),
                             ("https://…/salsa.mp4", request["dance_video"])):
        assert placeholder in run
        run = run.replace(placeholder, url)
    body = json.loads(re.search(r"-d '(\{.*\})'", run).group(1))  # type: ignore[union-attr]
    assert set(body) == {"input"}
    # When the job is submitted with curl, then its status polled with curl until it leaves the queue
    status, answer = run_curl(run, env, tmp_path)
    submitted = json.loads(answer)
    poll = readme_line("status/JOB_ID").replace("ENDPOINT", "ep").replace("JOB_ID", submitted["id"])
    seen: list[str] = []

    def completed() -> dict[str, Any] | None:
        code, text = run_curl(poll, env, tmp_path)
        assert code == 200, text
        current: dict[str, Any] = json.loads(text)
        seen.append(current["status"])
        return current if current["status"] not in ON_THE_WAY else None

    final = cast(dict[str, Any], wait_until(completed, 60, "the job to leave IN_QUEUE/IN_PROGRESS"))
    # Then /run answered the id, IN_QUEUE, and the polls went through the old states to COMPLETED
    assert status == 200 and submitted["status"] == "IN_QUEUE", answer
    assert final["status"] == "COMPLETED" and set(seen[:-1]) <= ON_THE_WAY, seen
    # and the result is under "output": the dance job's own result, its video among the outputs
    output = final["output"]
    assert final["id"] == submitted["id"] and output["job_id"] == submitted["id"]
    assert output["status"] == "succeeded" and any(o["kind"] == "video" for o in output["outputs"])
    assert isinstance(final["executionTime"], int) and sim.state()["prompts_received"] == 1

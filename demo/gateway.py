"""The demo's HTTP gateway: ``dance gateway`` on loopback beside the demo's cluster, with a generated API
key, proven by the curl line the demo prints, which it runs itself first (the old endpoint's status route,
for the job the demo ran)."""

from __future__ import annotations

import json
import secrets
import shlex
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.job_index import KIND_DANCE, JobIndex
from harness.local import gateway_service, wait_for_gateway
from harness.processes import ManagedProcess, free_port
from producer.client import DanceClient

#: Port the gateway prefers (8188, its default, is ComfyUI's too, which COMFYUI_URL may name); a free one
#: is used when it is taken.
GATEWAY_PORT = 8189
#: Name of the demo's API key: the owner of the demo's job in the gateway's job index.
KEY_NAME = "demo"
#: The RunPod endpoint id of the curl line; without DANCE_GATEWAY_ENDPOINT_QUEUES any id uses the key's queue.
ENDPOINT = "demo"
#: Seconds the demo waits for the gateway to answer /api/v2/health.
START_TIMEOUT_S = 30.0
#: Seconds one call of the curl line may take.
CURL_TIMEOUT_S = 30.0


@dataclass
class DemoGateway:
    url: str
    key: str
    #: The job the curl line reads, once the demo has run one.
    job_id: str | None = None

    def status_argv(self, job_id: str) -> list[str]:
        return ["curl", "-sS", "-H", f"Authorization: Bearer {self.key}", f"{self.url}/v2/{ENDPOINT}/status/{job_id}"]

    def describe(self) -> str:
        lines = [f"Gateway: {self.url}  (API key {KEY_NAME}: {self.key})"]
        if self.job_id is not None:
            lines.append(f"  {shlex.join(self.status_argv(self.job_id))}")
        return "\n".join(lines)

    def check_job(self, job_id: str, result: dict[str, Any]) -> int:
        """Run the curl line for ``job_id``: 0 when the gateway answers COMPLETED with the producer's result."""
        self.job_id = job_id
        argv = self.status_argv(job_id)
        print(f"\nthe same job through the gateway:\n  {shlex.join(argv)}")
        try:
            body = json.loads(_fetch(argv))
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            print(f"the gateway did not answer: {exc}")
            return 1
        output = body.get("output") or {}
        same = output.get("job_id") == job_id and output.get("outputs") == result["outputs"]
        print(f"  status {body.get('status')}; output {'the result above' if same else 'NOT the result above'}")
        return 0 if body.get("status") == "COMPLETED" and same else 1


def _fetch(argv: list[str]) -> str:
    """The body the curl line prints; the same request through urllib where curl is not installed."""
    if shutil.which("curl") is not None:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=CURL_TIMEOUT_S, check=True)
        return done.stdout
    request = urllib.request.Request(argv[-1], headers={"Authorization": argv[3].split(": ", 1)[1]})
    with urllib.request.urlopen(request, timeout=CURL_TIMEOUT_S) as response:
        return str(response.read().decode())


def start_gateway(start: Callable[[ManagedProcess], ManagedProcess], env: dict[str, str],
                  log_dir: Path) -> DemoGateway:
    """A gateway against the demo's broker and storage, with one generated key, answering its health route."""
    key, port = secrets.token_urlsafe(24), free_port(GATEWAY_PORT)
    url = f"http://127.0.0.1:{port}"
    process = start(gateway_service("gateway", port, {**env, "DANCE_GATEWAY_API_KEYS": f"{KEY_NAME}={key}"},
                                    log_dir))
    wait_for_gateway(process, url, START_TIMEOUT_S)
    return DemoGateway(url, key)


def adopt_job(client: DanceClient, job_id: str) -> None:
    """Record ``job_id`` under the demo's key in the gateway's job index, before it is submitted.

    The demo submits with local files, which the HTTP routes refuse (the gateway never reads files of its
    own host for a caller), so it submits through the Python producer and writes the index entry the
    gateway's own submit writes, in the same order (claim, then queue): the gateway then serves the job to
    the demo's key like any job submitted over HTTP.
    """
    JobIndex(client.redis).claim(job_id, KEY_NAME, client.settings.default_queue, KIND_DANCE)

"""A real ``dance gateway`` process per test, in front of the test's Redis and storage, and an HTTP helper."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.fixtures.workers import Cluster
from tests.support.processes import ManagedProcess, free_port, wait_until

#: Secrets of the two keys the tests configure (long enough for the gateway's minimum).
ALICE_KEY = "alice-secret-0123456789abcdef"
BOB_KEY = "bob-secret-fedcba9876543210xyz"
#: Alice may use any queue; Bob only "dance".
TEST_KEYS = f"alice={ALICE_KEY};bob={BOB_KEY}@dance"
#: Timeout of one HTTP call from a test, in seconds.
HTTP_TIMEOUT_S = 30.0


@dataclass
class Gateway:
    url: str
    process: ManagedProcess

    def call(self, method: str, path: str, key: str | None = ALICE_KEY, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return requests.request(method, self.url + path, headers=headers, timeout=HTTP_TIMEOUT_S, **kwargs)

    def events(self, job_id: str, key: str = ALICE_KEY) -> Iterator[tuple[str, dict[str, Any]]]:
        """The job's SSE events as (event, data) until the server ends the stream."""
        with requests.get(f"{self.url}/api/v2/jobs/{job_id}/events", stream=True, timeout=HTTP_TIMEOUT_S,
                          headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}) as response:
            assert response.status_code == 200, response.text
            event = None
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event is not None:
                    yield event, json.loads(line.removeprefix("data: "))
                    event = None


StartGateway = Callable[..., Gateway]


def gateway_argv() -> list[str]:
    return [sys.executable, "-m", "producer.cli", "gateway"]


@pytest.fixture
def start_gateway(cluster: Cluster) -> Iterator[StartGateway]:
    """Factory: ``start_gateway(DANCE_GATEWAY_MAX_QUEUE_DEPTH="1")`` starts one gateway (keys: alice, bob)."""
    started: list[ManagedProcess] = []

    def factory(**env: str) -> Gateway:
        port = free_port()
        settings = {"CELERY_BROKER_URL": cluster.broker_url, "CELERY_RESULT_BACKEND": cluster.broker_url,
                    "DANCE_STORAGE_URL": cluster.storage_url, "DANCE_GATEWAY_PORT": str(port),
                    "DANCE_GATEWAY_API_KEYS": TEST_KEYS, "PYTHONUNBUFFERED": "1", **env}
        process = ManagedProcess(f"gateway-{port}", gateway_argv(), cluster.root / f"gateway-{port}.log",
                                 env=settings).start()
        started.append(process)
        gateway = Gateway(f"http://127.0.0.1:{port}", process)

        def healthy() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"gateway exited with {process.poll()}:\n{process.log()[-3000:]}")
            try:
                return gateway.call("GET", "/api/v2/health", key=None).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(healthy, 30, "the gateway to answer /api/v2/health")
        return gateway

    yield factory
    for process in started:
        process.stop(timeout_s=10)

"""GPU workers with telemetry, the hooks worker, and a real HTTP endpoint that receives webhooks.

``start_gpu_worker`` starts ``celery -A worker.app worker -I worker.telemetry.install``: the same worker as
``cluster.start_worker``, with the telemetry module imported as the app's ``include`` list does once it
names it (``-I`` and ``include`` import the module at the same point of the worker's start).
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fixtures.workers import Cluster
from tests.support.processes import ManagedProcess

#: The secret the hooks worker signs with in tests (Standard Webhooks form).
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"dance-test-webhook-secret-32byte").decode()
#: How long a test waits for a delivery, in seconds.
DELIVERY_TIMEOUT_S = 30.0
#: What an endpoint answers while it fails on purpose.
FAILING_STATUS = 503
#: Longest a "hang" route holds a request, in seconds (the server's stop cuts it short).
HANG_LIMIT_S = 60.0


def start_gpu_worker(cluster: Cluster, name: str, comfyui_url: str, **extra: str) -> ManagedProcess:
    work = cluster.root / name
    env = cluster.env(comfyui_url, DANCE_WORK_DIR=str(work / "scratch"), **extra)
    argv = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-n", f"{name}@%h", "--loglevel", "INFO",
            "-I", "worker.telemetry.install"]
    process = ManagedProcess(name, argv, work / "worker.log", env=env).start()
    cluster.workers.append(process)
    return process


def start_hooks_worker(cluster: Cluster, **extra: str) -> ManagedProcess:
    env = {
        "CELERY_BROKER_URL": cluster.broker_url, "CELERY_RESULT_BACKEND": cluster.broker_url,
        "DANCE_WEBHOOK_SECRET": WEBHOOK_SECRET, "DANCE_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
        "DANCE_WEBHOOK_RETRY_BASE_S": "0.05", "DANCE_WEBHOOK_RETRY_CAP_S": "0.2", "DANCE_WEBHOOK_TIMEOUT_S": "5",
        # Retries are published by the outbox reconciler when due: a short interval keeps tests quick.
        "DANCE_WEBHOOK_RECONCILE_INTERVAL_S": "0.2", "DANCE_WEBHOOK_REPUBLISH_AFTER_S": "5",
        "PYTHONUNBUFFERED": "1", **extra,
    }
    argv = [sys.executable, "-m", "producer.cli", "hooks-worker", "-n", "hooks@%h"]
    process = ManagedProcess("hooks", argv, cluster.root / "hooks" / "worker.log", env=env).start()
    cluster.workers.append(process)
    process.wait_for_log(" ready.")
    return process


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    #: When it arrived (time.monotonic()), and the status it was answered with (None: hung up on).
    at_s: float = field(default_factory=time.monotonic)
    answered: int | None = None

    @property
    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class Endpoint:
    """How one path answers: a status, or a hang until the server stops; optionally a 503 (or a hang)
    for its first few requests and ``status`` after that."""

    status: int = 204
    hang: bool = False
    fail_first: int = 0
    hang_first: int = 0
    seen: int = 0

    def answer(self) -> int | None:
        """The status for the next request (None: hang); counts it."""
        self.seen += 1
        if self.hang or self.seen <= self.hang_first:
            return None
        return FAILING_STATUS if self.seen <= self.hang_first + self.fail_first else self.status


@dataclass
class WebhookReceiver:
    """A real threaded HTTP server on 127.0.0.1 that records every POST; tests wait on conditions.

    ``host`` and ``port`` move it (127.0.0.2 on another receiver's port plays an internal host)."""

    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.hanging = 0
        self.server = ThreadingHTTPServer((self.host, self.port), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def url(self, path: str, endpoint: Endpoint | None = None) -> str:
        self.endpoints[path] = endpoint or Endpoint()
        return f"http://{self.host}:{self.server.server_address[1]}{path}"

    def record(self, delivery: Delivery) -> int | None:
        """Record the delivery and decide its answer (None: hang)."""
        with self.changed:
            answer = self.endpoints.get(delivery.path, Endpoint(status=404)).answer()
            delivery.answered = answer
            self.deliveries.append(delivery)
            self.changed.notify_all()
        return answer

    def wait_for(self, predicate: Callable[[list[Delivery]], Any], what: str,
                 timeout_s: float = DELIVERY_TIMEOUT_S) -> Any:
        with self.changed:
            result = self.changed.wait_for(lambda: predicate(list(self.deliveries)), timeout=timeout_s)
        if not result:
            raise AssertionError(f"timed out waiting for {what}; got {[(d.path, d.body) for d in self.deliveries]}")
        return result

    def to(self, path: str) -> list[Delivery]:
        with self.changed:
            return [d for d in self.deliveries if d.path == path]

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def _handler(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the recorded deliveries are what tests read."""

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            answer = receiver.record(Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if answer is None:
                with receiver.changed:
                    receiver.hanging += 1
                    receiver.changed.notify_all()
                receiver.stopping.wait(HANG_LIMIT_S)
                self.close_connection = True
                return
            self.send_response(answer)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.stop()

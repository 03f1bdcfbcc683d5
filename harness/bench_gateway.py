"""The gateway's benchmark: what it adds to a submit over the Python producer, and how late its SSE events are.

One loopback cluster (Redis, one simulated GPU with its worker, a media server) and one ``dance gateway``.

*Added latency.* ``jobs`` submits through ``DanceClient.submit`` and ``jobs`` through
``POST /v2/{endpoint}/run``, alternated one by one in the same run, each timed from the call to the answer
that the job is queued (submit→accepted), the HTTP client on one keep-alive connection as a service's
would be. Both send their jobs to a queue no worker consumes, so the simulated GPU does not load the
machine while they are timed; the rest of a job's path is the same for both. What the gateway adds is
HTTP, the key check, the queue-depth check and the job-index claim, measured per pair.

*SSE delay.* ``sse_jobs`` jobs run one after the other on the worker, each followed over
``GET /api/v2/jobs/{id}/events`` while the benchmark subscribes itself to the channel the worker's
PROGRESS write publishes on (Celery's ``celery-task-meta-<id>``, the gateway's own feed): an event's delay
is its receipt by the SSE client minus the arrival of the write it reports (0 where the benchmark's
listener stamped the write after the event's receipt: the write came first, by causality; those are
counted). The job is recorded in the gateway's index, subscribed to and connected to before it is
queued, so every write is one the stream reports live.
"""

from __future__ import annotations

import http.client
import json
import secrets
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from gateway.job_index import KIND_DANCE, JobIndex
from gateway.jobview import snapshot_from_meta, v2_progress
from harness.bench_cluster import BenchCluster, ThrottledMedia, bench_media, percentile
from harness.bench_scenarios import request_for
from harness.local import gateway_service, wait_for_gateway
from harness.processes import free_port
from producer.client import DanceClient

#: Queue of the timed submits: no worker consumes it (DANCE_GATEWAY_ENDPOINT_QUEUES maps the endpoint to it).
PARKED_QUEUE = "bench.parked"
ENDPOINT = "parked"
#: The benchmark's API key name.
KEY_NAME = "bench"
#: Untimed submits on each path first (connections, imports, first-call caches).
WARMUP_SUBMITS = 3
#: Simulated GPU seconds and sampler steps of an SSE job: a few progress writes per job.
SSE_EXEC_S, SSE_STEPS = 2.0, 8
#: Longest wait for one HTTP answer or one followed job, in seconds.
HTTP_TIMEOUT_S, JOB_TIMEOUT_S = 30.0, 120.0


def gateway_latency(root: Path, jobs: int, sse_jobs: int) -> dict[str, Any]:
    """Both figures from one cluster and one gateway (see the module's docstring)."""
    cluster = BenchCluster(root, gpus=1, exec_s=SSE_EXEC_S).start()
    media = ThrottledMedia(bench_media(root, tiny=True), bytes_per_s=None)
    key, port = secrets.token_urlsafe(24), free_port()
    env = {"CELERY_BROKER_URL": cluster.broker, "CELERY_RESULT_BACKEND": cluster.broker,
           "DANCE_STORAGE_URL": (root / "storage").as_uri(), "DANCE_GATEWAY_API_KEYS": f"{KEY_NAME}={key}",
           "DANCE_GATEWAY_ENDPOINT_QUEUES": f"{ENDPOINT}={PARKED_QUEUE}"}
    gateway = gateway_service("gateway", port, env, root / "logs").start()
    cluster.processes.append(gateway)
    try:
        wait_for_gateway(gateway, f"http://127.0.0.1:{port}", 30)
        with cluster.client() as client:
            gw = _Http(port, key)
            producer_ms, gateway_ms = _alternate_submits(client, gw, media, jobs)
            followed = [_follow_one(client, gw, media) for _ in range(sse_jobs)]
    finally:
        cluster.stop()
        media.close()
    added = [gw - py for py, gw in zip(producer_ms, gateway_ms, strict=True)]
    signed_ms = [delay for delays, _ in followed for delay in delays]
    delays_ms = [max(0.0, delay) for delay in signed_ms]
    return {"producer_submit_p50_ms": _ms(percentile(producer_ms, 0.5)),
            "producer_submit_p95_ms": _ms(percentile(producer_ms, 0.95)),
            "gateway_submit_p50_ms": _ms(percentile(gateway_ms, 0.5)),
            "gateway_submit_p95_ms": _ms(percentile(gateway_ms, 0.95)),
            "added_p50_ms": _ms(percentile(added, 0.5)), "added_p95_ms": _ms(percentile(added, 0.95)),
            "submits": jobs, "sse_delay_p50_ms": _ms(percentile(delays_ms, 0.5)),
            "sse_delay_p95_ms": _ms(percentile(delays_ms, 0.95)), "sse_delay_max_ms": _ms(max(delays_ms)),
            "sse_events": len(delays_ms), "sse_events_unmatched": sum(unmatched for _, unmatched in followed),
            "sse_writes_stamped_late": sum(1 for delay in signed_ms if delay < 0),
            "sse_jobs": sse_jobs}


def _ms(value: float) -> float:
    return round(value, 2)


class _Http:
    """One keep-alive connection to the gateway, with the benchmark's key."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_S)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.connection.request("POST", path, body=json.dumps(body), headers=self.headers)
        response = self.connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {path}: HTTP {response.status}: {data[:500]!r}")
        answer: dict[str, Any] = json.loads(data)
        return answer


def _alternate_submits(client: DanceClient, gw: _Http, media: ThrottledMedia,
                       jobs: int) -> tuple[list[float], list[float]]:
    """Milliseconds of each producer submit and each gateway submit, alternated, after a few untimed ones."""
    producer_ms: list[float] = []
    gateway_ms: list[float] = []
    for n in range(WARMUP_SUBMITS + jobs):
        request = request_for(media, seed=n)
        began = time.perf_counter()
        client.submit(request, queue=PARKED_QUEUE)
        through_producer = time.perf_counter() - began
        began = time.perf_counter()
        answer = gw.post(f"/v2/{ENDPOINT}/run", {"input": request})
        through_gateway = time.perf_counter() - began
        if answer.get("status") != "IN_QUEUE":
            raise RuntimeError(f"the gateway did not queue the job: {answer}")
        if n >= WARMUP_SUBMITS:
            producer_ms.append(through_producer * 1000)
            gateway_ms.append(through_gateway * 1000)
    return producer_ms, gateway_ms


class _Channel:
    """The benchmark's own subscription to a job's result-backend channel: when each write arrived."""

    def __init__(self, client: DanceClient, job_id: str) -> None:
        self.arrivals: list[tuple[float, dict[str, Any]]] = []
        self.stop = threading.Event()
        self.redis = redis.Redis.from_url(client.settings.result_backend)
        self.pubsub = redis.client.PubSub(self.redis.connection_pool)
        self.pubsub.subscribe(client.app.backend.get_key_for_task(job_id))
        # The subscription is live once its confirmation arrived: no later write can be missed.
        while (message := self.pubsub.get_message(timeout=HTTP_TIMEOUT_S)) is None or message["type"] != "subscribe":
            pass
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        while not self.stop.is_set():
            message = self.pubsub.get_message(timeout=0.1)
            if message is not None and message["type"] == "message":
                self.arrivals.append((time.perf_counter(), json.loads(message["data"])))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.pubsub.close()
        self.redis.close()


class _EventStream:
    """One job's SSE stream, opened now and read in a thread: when each progress event arrived."""

    def __init__(self, gw: _Http, job_id: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=JOB_TIMEOUT_S)
        self.connection.request("GET", f"/api/v2/jobs/{job_id}/events",
                                headers={**gw.headers, "Accept": "text/event-stream"})
        self.response = self.connection.getresponse()
        if self.response.status != 200:
            raise RuntimeError(f"events of {job_id}: HTTP {self.response.status}: {self.response.read()[:500]!r}")
        self.progress: list[tuple[float, dict[str, Any]]] = []
        #: Set on the first event: the gateway has subscribed and read the job's state by then.
        self.first = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        event = None
        while line := self.response.readline():
            text = line.decode().rstrip("\r\n")
            if text.startswith("event: "):
                event = text.removeprefix("event: ")
            elif text.startswith("data: "):
                if event == "progress":
                    self.progress.append((time.perf_counter(), json.loads(text.removeprefix("data: "))))
                self.first.set()
        self.connection.close()

    def wait(self, timeout_s: float) -> None:
        self.thread.join(timeout=timeout_s)
        if self.thread.is_alive():
            self.connection.close()
            raise TimeoutError(f"an event stream did not end within {timeout_s} s")


def _follow_one(client: DanceClient, gw: _Http, media: ThrottledMedia) -> tuple[list[float], int]:
    """The delays, in ms, of one job's SSE progress events after the PROGRESS writes they report, and how
    many events matched no write (none should: each event reports one write)."""
    job_id = uuid.uuid4().hex
    queue = client.settings.default_queue
    # Recorded for the key as the gateway's own submit records it (claim, then queue), so the events route
    # serves the job before it is queued.
    JobIndex(client.redis).claim(job_id, KEY_NAME, queue, KIND_DANCE)
    channel = _Channel(client, job_id)
    try:
        stream = _EventStream(gw, job_id)
        if not stream.first.wait(HTTP_TIMEOUT_S):
            raise TimeoutError(f"job {job_id}'s event stream sent nothing within {HTTP_TIMEOUT_S} s")
        client.submit(request_for(media, steps=SSE_STEPS, seed=1), job_id=job_id, queue=queue)
        stream.wait(JOB_TIMEOUT_S)
    finally:
        channel.close()
    delays = _match(channel.arrivals, stream.progress)
    return delays, len(stream.progress) - len(delays)


def _match(arrivals: list[tuple[float, dict[str, Any]]], received: list[tuple[float, dict[str, Any]]]) -> list[float]:
    """Per progress event, ms from the earliest write not yet matched that it reports, to its receipt.

    Writes are taken in order. Negative where the benchmark's listener stamped the write after the
    event's receipt (its thread woke late on a loaded machine).
    """
    writes = [(at, v2_progress(snapshot_from_meta(meta, False))) for at, meta in arrivals]
    used: set[int] = set()
    delays = []
    for received_at, progress in received:
        found = next((index for index, (_, reported) in enumerate(writes)
                      if index not in used and reported == progress), None)
        if found is not None:
            used.add(found)
            delays.append((received_at - writes[found][0]) * 1000)
    return delays

"""v2 job events (SSE) and cancel of dance jobs, fed by the worker's real progress writes."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.fixtures.workers import Cluster
from tests.gateway.conftest import Gateway, StartGateway
from tests.support.jobs import dance_request
from tests.support.processes import wait_until

#: How long a test waits for one SSE event, in seconds.
EVENT_TIMEOUT_S = 60.0

Event = tuple[str, dict[str, Any]]


class EventReader:
    """Reads one SSE connection on a thread, so a test can wait for events while it acts."""

    def __init__(self, gateway: Gateway, job_id: str) -> None:
        self.events: queue.Queue[Event | None] = queue.Queue()
        self._stream: Iterator[Event] = gateway.events(job_id)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                self.events.put(event)
        finally:
            self.events.put(None)

    def until(self, wanted: str, status: str | None = None) -> list[Event]:
        """Events up to and including the first ``wanted`` one (of ``status``, for status events)."""
        seen: list[Event] = []
        while True:
            event = self.events.get(timeout=EVENT_TIMEOUT_S)
            assert event is not None, f"the stream ended before {wanted} {status}: {seen}"
            seen.append(event)
            if event[0] == wanted and (status is None or event[1].get("status") == status):
                return seen

    def ended(self) -> bool:
        return self.events.get(timeout=EVENT_TIMEOUT_S) is None


def test_the_event_stream_pushes_status_progress_outputs_and_the_end_and_a_reconnect_resyncs(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path, start_gateway: StartGateway
) -> None:
    # Given a job whose sampler the simulator holds after step 2 of 4; the gateway polls only every 60 s,
    # so every event before the end must come from the backend's pub/sub push
    sim = comfysim(exec_s=0.2)
    sim.faults({"hold": True, "hold_at_progress": "2/4"})
    cluster.start_worker("w", sim.url)
    gateway = start_gateway(DANCE_GATEWAY_SSE_POLL_INTERVAL_S="60")
    job_id = gateway.call("POST", "/v2/ep/run",
                          json={"input": dance_request(media_server, tmp_path, steps=4)}).json()["id"]
    # When a client follows its events
    reader = EventReader(gateway, job_id)
    first = reader.until("status")
    # Then the stream opens with the job's status, then reports it running with the sampler's step
    assert first[0][0] == "status" and first[0][1]["status"] in ("queued", "running")
    running = reader.until("progress") if first[0][1]["status"] == "running" else reader.until("status", "running")

    def sampler_step(events: list[Event]) -> bool:
        return any(name == "progress" and data.get("step") == 2 and data.get("steps") == 4 for name, data in events)

    seen = running
    while not sampler_step(seen):
        seen += reader.until("progress")
    # and a second client connecting now first gets the full snapshot: running, and the same progress
    late = EventReader(gateway, job_id)
    snapshot = late.until("progress")
    assert snapshot[0] == ("status", {"status": "running", "queue_position": None})
    assert snapshot[-1][1]["step"] == 2 and snapshot[-1][1]["steps"] == 4
    # When the sampler goes on, Then both streams announce the outputs and end with succeeded
    sim.release()
    for stream in (reader, late):
        tail = stream.until("status", "succeeded")
        outputs = [data for name, data in tail if name == "output"]
        assert outputs and all(o["job_id"] == job_id for o in outputs)
        assert {o["type"] for o in outputs} >= {"video"}
        assert stream.ended()


def test_cancelling_a_running_job_through_v2_reads_canceling_then_canceled_and_interrupts_it(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path, start_gateway: StartGateway
) -> None:
    # Given a running job whose prompt the simulator holds
    sim = comfysim(exec_s=0.2)
    sim.faults({"hold": True})
    cluster.start_worker("w", sim.url)
    gateway = start_gateway(DANCE_GATEWAY_SSE_POLL_INTERVAL_S="0.5")
    job_id = gateway.call("POST", "/v2/ep/run", json={"input": dance_request(media_server, tmp_path)}).json()["id"]
    wait_until(lambda: sim.state()["running"] is not None, 30, "the prompt to start")
    reader = EventReader(gateway, job_id)
    reader.until("status", "running")
    # When it is cancelled through the v2 route
    answer = gateway.call("POST", f"/api/v2/jobs/{job_id}/cancel")
    # Then the answer is the job, canceling (or already canceled), and the stream ends canceled
    assert answer.status_code == 200 and answer.json()["status"] in ("canceling", "canceled"), answer.text
    assert answer.json()["urls"]["self"].endswith(f"/api/v2/jobs/{job_id}")
    reader.until("status", "canceled")
    assert reader.ended()
    # and its prompt was interrupted once, and a second cancel changes nothing
    wait_until(lambda: sim.state()["interrupts"] == 1, 20, "the interrupt")
    again = gateway.call("POST", f"/api/v2/jobs/{job_id}/cancel").json()
    assert again["status"] == "canceled" and sim.state()["interrupts"] == 1
    assert gateway.call("GET", "/api/v2/jobs?status=canceled").json()["jobs"][0]["id"] == job_id


def test_a_quiet_stream_sends_keep_alives_at_its_interval_even_when_polls_are_rarer(
    cluster: Cluster, media_server: Any, tmp_path: Path, start_gateway: StartGateway
) -> None:
    # Given a queued job (no worker) and a gateway that keeps streams alive every second but polls every minute
    gateway = start_gateway(DANCE_GATEWAY_SSE_KEEPALIVE_S="1", DANCE_GATEWAY_SSE_POLL_INTERVAL_S="60")
    job_id = gateway.call("POST", "/v2/ep/run", json={"input": dance_request(media_server, tmp_path)}).json()["id"]
    # When a client reads the raw stream
    with gateway.call("GET", f"/api/v2/jobs/{job_id}/events", stream=True) as response:
        lines = response.iter_lines(decode_unicode=True)
        head = [next(lines) for _ in range(2)]
        comments: list[str] = []
        for line in lines:
            if line.startswith(":"):
                comments.append(line)
            if len(comments) == 2:
                break
    # Then it opens with the queued status and then carries keep-alive comments, well before a poll
    assert head == ["event: status", 'data: {"status":"queued","queue_position":null}']
    assert comments == [": keep-alive", ": keep-alive"]
    assert response.headers["Content-Type"].startswith("text/event-stream")

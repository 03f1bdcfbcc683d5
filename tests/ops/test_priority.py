"""Priorities on the Redis broker, on a one-GPU cluster: 0 runs first, 9 last, FIFO within a level."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.fixtures.workers import Cluster
from tests.support.jobs import dance_request, queued_messages
from tests.support.processes import wait_until

#: Low-priority jobs queued ahead of the urgent one.
LOW_JOBS = 20
#: A worker that runs one job at a time and stages none ahead (worker/pipeline.py).
SERIAL = {"DANCE_PIPELINE_DEPTH": "0"}


def test_a_high_priority_job_submitted_behind_twenty_low_ones_runs_next(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given one worker (concurrency 1, prefetch 1: no job staged ahead) busy with a low-priority job
    # held in the sampler
    sim = comfysim(exec_s=0.1)
    sim.faults({"hold": True})
    cluster.start_worker("w", sim.url, **SERIAL)
    request = dance_request(media_server, tmp_path)
    with cluster.client() as client:
        first = client.submit(request, job_id="low-0", priority=9)
        wait_until(lambda: sim.state()["held"], 30, "the first job to hold in the sampler")
        # When twenty more low-priority jobs and then one high-priority job are queued
        lows = [client.submit(request, job_id=f"low-{n}", priority=9) for n in range(1, LOW_JOBS + 1)]
        high = client.submit(request, job_id="high", priority=0)
        assert queued_messages(cluster.broker_url) == LOW_JOBS + 1
        # and the running job ends (the next job to reach the sampler holds there, so we can see which)
        sim.faults({"hold": True})
        sim.release()
        wait_until(lambda: first.status() == "SUCCESS" and sim.state()["held"], 30, "the next job to hold")
        # Then the high-priority job is the one running, and every low one still waits
        assert high.status() == "PROGRESS"
        assert {low.status() for low in lows} == {"PENDING"}
        assert queued_messages(cluster.broker_url) == LOW_JOBS
        # and the low ones then run in the order they were sent (FIFO within a level)
        sim.release()
        assert high.result(timeout_s=30)["status"] == "succeeded"
        wait_until(lambda: lows[0].status() == "SUCCESS", 30, "the next low job")
        assert lows[-1].status() == "PENDING"

"""`dance cluster` from a machine that has nothing but the broker URL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis

from producer import keys
from producer.clusterview import read_records
from tests.fixtures.workers import Cluster
from tests.producer.test_cli import broker_env, dance
from tests.support.jobs import dance_request
from tests.support.ops import start_gpu_worker
from tests.support.processes import wait_until


def test_cluster_shows_ready_busy_and_waiting_workers_queue_depths_and_the_job_rate(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a worker running a job held in the sampler (staging none ahead, so the queue stays as sent),
    # and a worker whose ComfyUI lacks a node class
    sim = comfysim(exec_s=0.1)
    sim.faults({"hold": True})
    start_gpu_worker(cluster, "busy", sim.url, DANCE_PIPELINE_DEPTH="0")
    lacking = comfysim(exec_s=0.1, missing_node=["WanVideoSamplerv2"])
    start_gpu_worker(cluster, "waiting", lacking.url)
    broker = redis.Redis.from_url(cluster.broker_url)

    def waiting_worker_reported() -> bool:
        return any(r["hostname"].startswith("waiting@") for r in read_records(broker, keys.WORKER_METRICS_PATTERN))

    wait_until(waiting_worker_reported, 30, "the waiting worker's first snapshot")
    request = dance_request(media_server, tmp_path)
    with cluster.client() as client:
        running = client.submit(request, job_id="running-1")
        wait_until(lambda: sim.state()["held"], 30, "the job to hold in the sampler")
        for n, priority in enumerate((3, 3, 8)):
            client.submit(request, job_id=f"queued-{n}", priority=priority)
        # When `dance cluster --json` looks
        view = json.loads(dance("cluster", "--json", env=broker_env(cluster)).stdout)
        # Then it shows each worker's readiness, its GPU and its current job
        workers = {w["hostname"].split("@")[0]: w for w in view["workers"]}
        assert workers["busy"]["ready"] is True and workers["busy"]["busy"] is True
        assert workers["busy"]["current_jobs"] == ["running-1"] and workers["busy"]["device"]
        assert workers["waiting"]["ready"] is False and workers["waiting"]["busy"] is False
        assert "waiting for ComfyUI" in workers["waiting"]["readiness"]
        # and the depth of every priority list of the queue
        depth = next(q for q in view["queues"] if q["queue"] == "dance")
        assert depth["total"] == 3 and depth["by_priority"] == {**{str(p): 0 for p in range(10)}, "3": 2, "8": 1}
        # and, once the job ended, the job rate counts it
        sim.release()
        running.result(timeout_s=30)
    text = dance("cluster", env=broker_env(cluster)).stdout
    assert "jobs ended in the last 5 min:" in text and "waiting for ComfyUI" in text
    ended = json.loads(dance("cluster", "--json", "--inspect-timeout", "0", env=broker_env(cluster)).stdout)
    assert ended["jobs_ended"]["count"] >= 1

"""The Flower collector turns worker snapshots in Redis into Prometheus series; the dashboard uses only those."""

from __future__ import annotations

import json
import re
from pathlib import Path

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from producer import keys
from worker.telemetry.flower import DanceCollector, collector_client
from worker.telemetry.metrics import WorkerMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docker" / "grafana" / "dance-cluster.json"


def _snapshot(hostname: str) -> dict[str, object]:
    metrics = WorkerMetrics()
    metrics.job_ended("succeeded", None, {"queued_s": 0.2, "download_s": 1.0, "execute_s": 300.0, "upload_s": 2.0})
    return {"hostname": hostname, "ready": True, "ready_after_s": 42.0, "device": "cuda:0",
            "vram": [{"device": "cuda:0 NVIDIA H100", "total_bytes": 80e9, "free_bytes": 60e9}], **metrics.snapshot()}


def test_a_scrape_serves_every_workers_snapshot_and_the_queue_depths(redis_db: str) -> None:
    # Given a worker's snapshot in Redis and two queued messages at priority 5
    client = redis.Redis.from_url(redis_db)
    client.set(keys.worker_metrics("gpu@a"), json.dumps(_snapshot("gpu@a")))
    client.rpush("dance:5", "m1", "m2")
    registry = CollectorRegistry()
    registry.register(DanceCollector(client))
    # When Prometheus scrapes
    text = generate_latest(registry).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    # Then the series carry the worker's numbers
    assert samples[("dance_worker_ready_seconds", (("worker", "gpu@a"),))] == 42.0
    assert samples[("dance_jobs_total", (("code", ""), ("outcome", "succeeded"), ("worker", "gpu@a")))] == 1.0
    assert samples[("dance_stage_duration_seconds_bucket",
                    (("le", "600.0"), ("stage", "execute"), ("worker", "gpu@a")))] == 1.0
    assert samples[("dance_stage_duration_seconds_bucket",
                    (("le", "120.0"), ("stage", "execute"), ("worker", "gpu@a")))] == 0.0
    assert samples[("dance_comfyui_vram_free_bytes", (("device", "cuda:0 NVIDIA H100"), ("worker", "gpu@a")))] == 60e9
    assert samples[("dance_queue_messages", (("priority", "5"), ("queue", "dance")))] == 2.0
    # and every dance series the Grafana dashboard charts is one the collector serves
    served = {name for name, _ in samples} | {family.name for family in text_string_to_metric_families(text)}
    charted = set(re.findall(r"\bdance_[a-z_]+", DASHBOARD.read_text()))
    assert charted and charted <= served, charted - served


def test_a_scrape_with_the_broker_down_serves_no_dance_series_and_does_not_fail() -> None:
    registry = CollectorRegistry()
    registry.register(DanceCollector(collector_client("redis://127.0.0.1:1/0")))
    assert "dance_" not in generate_latest(registry).decode()

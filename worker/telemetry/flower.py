"""Dance metrics on Flower's own /metrics: a Prometheus collector that reads the workers' snapshots.

Flower serves ``prometheus_client``'s default registry; :func:`register` adds a collector to it that, on
each scrape, reads every live worker's snapshot (:mod:`worker.telemetry.step`) and the queue depths from
Redis. Flower loads it through its config file (``--conf``, see :mod:`worker.telemetry.flowerconfig`).

Series (label ``worker`` is the Celery node name):

* ``dance_worker_ready``, ``dance_worker_ready_seconds`` (start to ready), ``dance_worker_busy_ratio``
  (last minute), ``dance_worker_busy_seconds_total``;
* ``dance_worker_warming`` (1 while the warm-up runs) and ``dance_worker_startup_seconds{milestone}``: the
  start-up timeline (worker/startup.py), seconds from boot to each milestone reached;
* ``dance_jobs_total{outcome, code}``;
* ``dance_stage_duration_seconds{stage}``: a histogram of queue_wait, download, execute and upload;
* ``dance_comfyui_vram_total_bytes`` / ``dance_comfyui_vram_free_bytes{device}`` from /system_stats;
* ``dance_queue_messages{queue, priority}``: messages waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.retry import Retry

from producer import keys
from producer.clusterview import discover_queues, queue_depths, read_records
from producer.ledger import HOOKS_QUEUE
from producer.redisurl import redis_client
from producer.settings import DEFAULT_QUEUE
from worker.startup import MILESTONES

log = logging.getLogger(__name__)

#: Timeout of the collector's Redis calls, in seconds: a scrape must not hang on a dead broker.
REDIS_TIMEOUT_S = 3.0
#: Jobs Flower keeps in memory (its ``--max_tasks``; Flower's own default is 100,000). Ten thousand is
#: 2.5 minutes of a 1,000-GPU fleet's jobs: Flower is for looking at what runs now, the result backend
#: keeps every job's outcome. Measured by ``make bench`` (harness/bench_flower.py, BENCHMARKS.md).
FLOWER_MAX_TASKS = 10_000
#: Workers Flower keeps in memory (its ``--max_workers``): a 1,000-GPU fleet and as many restarted names.
FLOWER_MAX_WORKERS = 2_000


def _worker_families(snapshots: list[dict[str, Any]]) -> Iterator[Metric]:
    ready = GaugeMetricFamily("dance_worker_ready", "1 when the worker's ComfyUI passed the readiness gate",
                              labels=["worker"])
    ready_s = GaugeMetricFamily("dance_worker_ready_seconds", "Seconds from worker start until ComfyUI was ready",
                                labels=["worker"])
    ratio = GaugeMetricFamily("dance_worker_busy_ratio", "Fraction of the last minute spent running a job",
                              labels=["worker"])
    busy = CounterMetricFamily("dance_worker_busy_seconds", "Seconds spent running jobs", labels=["worker"])
    for snap in snapshots:
        worker = [snap["hostname"]]
        ready.add_metric(worker, 1.0 if snap.get("ready") else 0.0)
        if snap.get("ready_after_s") is not None:
            ready_s.add_metric(worker, float(snap["ready_after_s"]))
        ratio.add_metric(worker, float(snap.get("busy_ratio") or 0.0))
        busy.add_metric(worker, float(snap.get("busy_seconds_total") or 0.0))
    yield from (ready, ready_s, ratio, busy)
    yield from _startup_families(snapshots)


def _startup_families(snapshots: list[dict[str, Any]]) -> Iterator[Metric]:
    warming = GaugeMetricFamily("dance_worker_warming", "1 while the worker runs its warm-up before ready",
                                labels=["worker"])
    startup = GaugeMetricFamily("dance_worker_startup_seconds", "Seconds from worker boot to each start-up "
                                "milestone it reached", labels=["worker", "milestone"])
    for snap in snapshots:
        warming.add_metric([snap["hostname"]], 1.0 if snap.get("warming") else 0.0)
        timeline = snap.get("startup") or {}
        for milestone in MILESTONES:
            after_s = timeline.get(f"{milestone}_s")
            if after_s is not None:
                startup.add_metric([snap["hostname"], milestone], float(after_s))
    yield from (warming, startup)


def _job_families(snapshots: list[dict[str, Any]]) -> Iterator[Metric]:
    jobs = CounterMetricFamily("dance_jobs", "Jobs ended on the worker, by outcome and error code",
                               labels=["worker", "outcome", "code"])
    stages = HistogramMetricFamily("dance_stage_duration_seconds", "Duration of each stage of successful jobs",
                                   labels=["worker", "stage"])
    for snap in snapshots:
        for row in snap.get("jobs") or []:
            jobs.add_metric([snap["hostname"], row["outcome"], row["code"]], float(row["count"]))
        for stage, hist in (snap.get("stages") or {}).items():
            cumulative, buckets = 0, []
            for bound, count in zip([*hist["bounds_s"], float("inf")], hist["counts"], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(cumulative)))
            stages.add_metric([snap["hostname"], stage], buckets, float(hist["sum_s"]))
    yield from (jobs, stages)


def _vram_families(snapshots: list[dict[str, Any]]) -> Iterator[Metric]:
    total = GaugeMetricFamily("dance_comfyui_vram_total_bytes", "VRAM of the device, as ComfyUI's /system_stats "
                              "reports it", labels=["worker", "device"])
    free = GaugeMetricFamily("dance_comfyui_vram_free_bytes", "Free VRAM of the device, as ComfyUI's "
                             "/system_stats reports it", labels=["worker", "device"])
    for snap in snapshots:
        for device in snap.get("vram") or []:
            labels = [snap["hostname"], str(device["device"])]
            if device.get("total_bytes") is not None:
                total.add_metric(labels, float(device["total_bytes"]))
            if device.get("free_bytes") is not None:
                free.add_metric(labels, float(device["free_bytes"]))
    yield from (total, free)


class DanceCollector(Collector):
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        try:
            snapshots = read_records(self.client, keys.WORKER_METRICS_PATTERN)
            depths = queue_depths(self.client, discover_queues(self.client, [DEFAULT_QUEUE, HOOKS_QUEUE]))
        except redis.RedisError as exc:
            # Flower's own series still answer; ours are absent, which an alert on absent() catches.
            log.warning("dance metrics unavailable: %s", exc)
            return
        yield from _worker_families(snapshots)
        yield from _job_families(snapshots)
        yield from _vram_families(snapshots)
        queued = GaugeMetricFamily("dance_queue_messages", "Messages waiting, by queue and priority (0 first)",
                                   labels=["queue", "priority"])
        for depth in depths:
            for priority, count in depth.by_priority.items():
                queued.add_metric([depth.queue, str(priority)], float(count))
        yield queued


def collector_client(broker_url: str, sentinel_master: str | None = None) -> redis.Redis:
    """A Redis client that fails fast: a scrape answers without the dance series rather than late."""
    return redis_client(broker_url, sentinel_master, socket_timeout=REDIS_TIMEOUT_S,
                        socket_connect_timeout=REDIS_TIMEOUT_S, retry=Retry(NoBackoff(), 0))


def register(broker_url: str, sentinel_master: str | None = None) -> DanceCollector:
    """Add the collector to the default registry that Flower's /metrics serves."""
    collector = DanceCollector(collector_client(broker_url, sentinel_master))
    REGISTRY.register(collector)
    return collector


def protect_metrics() -> None:
    """Serve Flower's /metrics only to clients that pass Flower's authentication, as its pages are.

    In Flower 2.x the handler lacks ``@authenticated``, so /metrics (worker names, queue names, job
    counts and error codes) answered anyone, whatever ``--basic-auth`` said. Wrapped here once, before
    Flower builds its app. Without any authentication configured (a loopback Flower, or ``--no-auth``)
    Flower lets every request through, /metrics included; /healthcheck stays open (it says only "OK").
    """
    from flower.views.monitor import Metrics
    from tornado.web import authenticated

    if not getattr(Metrics.get, "__wrapped__", None):
        Metrics.get = authenticated(Metrics.get)

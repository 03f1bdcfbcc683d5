"""A worker's own numbers: histograms by stage, jobs by outcome and code, the busy fraction."""

from __future__ import annotations

import time

from worker.telemetry.metrics import STAGE_BUCKETS_S, WorkerMetrics


def test_a_successful_jobs_timings_land_in_the_stage_histograms() -> None:
    metrics = WorkerMetrics()
    metrics.job_ended("succeeded", None, {"queued_s": 0.05, "download_s": 3.0, "execute_s": 400.0, "upload_s": 1.0})
    metrics.job_ended("failed", "input.not_found", None)
    snapshot = metrics.snapshot()
    execute = snapshot["stages"]["execute"]
    assert execute["count"] == 1 and execute["sum_s"] == 400.0
    assert execute["counts"][STAGE_BUCKETS_S.index(600.0)] == 1 and sum(execute["counts"]) == 1
    assert snapshot["stages"]["queue_wait"]["counts"][0] == 1
    assert snapshot["jobs"] == [{"outcome": "failed", "code": "input.not_found", "count": 1},
                                {"outcome": "succeeded", "code": "", "count": 1}]


def test_the_gpu_busy_fraction_covers_the_sampled_last_minute_only() -> None:
    # Given samples of ComfyUI's queue: busy for the first 30 s, then idle for 30 s
    metrics = WorkerMetrics()
    start = time.monotonic()
    for second in range(61):
        metrics.gpu_sample(second <= 30, now=start + second)
    # Then half the last minute was busy, and 30 busy seconds were counted
    assert abs(metrics.busy_ratio(start + 60) - 0.5) < 0.02
    assert metrics.snapshot()["busy_seconds_total"] == 30.0
    # and a minute of idle samples later, the fraction is 0 while the counter keeps its total
    for second in range(61, 122):
        metrics.gpu_sample(False, now=start + second)
    assert metrics.busy_ratio(start + 121) == 0.0 and metrics.gpu_busy_s == 30.0


def test_jobs_in_the_pool_are_the_current_jobs() -> None:
    metrics = WorkerMetrics()
    metrics.job_started("a")
    metrics.job_started("b")
    metrics.job_finished("a")
    assert metrics.current_jobs() == ["b"] and metrics.snapshot()["current_jobs"] == ["b"]

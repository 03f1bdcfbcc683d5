"""The fleet-scale figures of `make bench`: the flatness fit, the capacity projection and Flower's limits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.bench_cluster import ThrottledMedia, bench_media
from harness.bench_fleet import BACKLOG_JOBS_PER_WORKER, CPU_BUDGET_CORES, SETTLE_S, Fleet, fit, flatness, measure_cost
from harness.bench_scenarios import request_for
from worker.telemetry.flower import FLOWER_MAX_TASKS, FLOWER_MAX_WORKERS


def phase(cpu_ms_per_worker: float, commands: float = 10.0, bytes_out: float = 100.0) -> dict[str, Any]:
    return {"commands_per_s": commands, "input_bytes_per_s": 500.0, "output_bytes_per_s": bytes_out,
            "redis_cpu_ms_per_s": cpu_ms_per_worker}


def test_a_per_worker_cost_that_grows_with_the_fleet_is_not_flat_and_a_noisy_constant_one_is() -> None:
    # Given a cost per worker that grows with every peer (gossip), and one that only jitters
    growing = {n: 100.0 + 20.0 * n for n in (1, 4, 16, 32)}
    jittering = {1: 100.0, 4: 104.0, 16: 97.0, 32: 102.0}
    # When each is fitted
    grown, flat = flatness(growing), flatness(jittering)
    # Then the first drifts far beyond 15 % with a slope of 20 per worker, the second stays within it
    assert grown["drift_pct"] > 500 and round(grown["slope_per_worker"], 3) == 20.0
    assert flat["drift_pct"] <= 15.0 and abs(flat["slope_pct_of_base_per_worker"]) < 0.5


def test_the_projection_spends_half_a_core_on_the_per_worker_cost_after_redis_own_fixed_cost() -> None:
    # Given fleets whose Redis spends 4 ms/s of its own plus 2 ms/s per busy worker (1 per idle one)
    by_size = {n: {"idle": phase((4.0 + 1.0 * n) / n), "backlog": phase((4.0 + 2.0 * n) / n)} for n in (1, 4, 16, 32)}
    # When the figures are fitted
    figures = fit(by_size)
    # Then the per-worker CPU is the busy slope, the fixed part is taken out before the budget is spent
    assert figures["backlog_redis_cpu_ms_per_worker_s"] == 2.0 and figures["idle_redis_cpu_ms_per_worker_s"] == 1.0
    assert figures["workers_at_half_core"] == int((CPU_BUDGET_CORES * 1000 - 4.0) / 2.0)
    assert figures["idle_drift_pct"] == figures["backlog_drift_pct"] == 0.0


def test_dance_flowers_config_file_gives_flower_its_task_and_worker_limits(redis_db: str) -> None:
    # Given Flower's option table and the config file `dance flower` passes it
    script = ("import importlib.util, flower.options; from tornado.options import options, parse_config_file; "
              "parse_config_file(importlib.util.find_spec('worker.telemetry.flowerconfig').origin, final=False); "
              "print(options.max_tasks, options.max_workers)")
    # When Flower reads it
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60,
                          env={"CELERY_BROKER_URL": redis_db, "PATH": ""})
    # Then it keeps at most the project's numbers of tasks and workers, not Flower's 100,000 tasks
    assert done.stdout.split() == [str(FLOWER_MAX_TASKS), str(FLOWER_MAX_WORKERS)]


#: Workers of the settling check, and how long each staged job's download takes there, in seconds.
SETTLING_WORKERS = 2
SLOW_STAGING_S = 4.0


def test_the_fleet_benchmarks_busy_window_opens_only_once_no_staging_writes_a_jobs_state(tmp_path: Path) -> None:
    # Given a fleet of real workers, each with its own simulator, and a backlog whose inputs download slowly,
    # so that a worker holds its staged job (it lists it) seconds before that job's staging writes its state
    files = bench_media(tmp_path / "media", tiny=True)
    media = ThrottledMedia(files, bytes_per_s=sum(len(body) for body in files.values()) / SLOW_STAGING_S)
    fleet = Fleet(tmp_path / "fleet", SETTLING_WORKERS).start()
    try:
        with fleet.client() as client:
            for n in range(SETTLING_WORKERS * BACKLOG_JOBS_PER_WORKER):
                client.submit(request_for(media, seed=n))
            # When the benchmark waits for the fleet to settle and then measures its busy window
            fleet.wait_settled(client)
            window = measure_cost(fleet.port, SETTLE_S + SLOW_STAGING_S)
    finally:
        fleet.stop()
        media.close()
    # Then the window holds no write of a job's state (SETEX of the result backend, with its GET and PUBLISH)
    # and no count of an execution (INCR, once a prompt is queued): only the steady cost of busy workers
    assert "setex" not in window.calls and "incr" not in window.calls, window.calls

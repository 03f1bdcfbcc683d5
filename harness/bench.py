"""``make bench``: the performance targets, measured on loopback with the ComfyUI simulator.

Every scenario starts its own cluster. The serial baseline (the old endpoint's design: download, run,
upload, then the next job; ``DANCE_PIPELINE_DEPTH=0``) and this cluster run side by side in the same
invocation, so their ratio is what counts on a shared, noisy machine; so do the Python producer and the
HTTP gateway in the gateway scenario (harness/bench_gateway.py). Results go to stdout as a table and to
``var/bench/results.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import bench_coldstart as coldstart
from harness import bench_gateway
from harness import bench_scenarios as scenarios
from harness.local import fresh_dir

#: Simulated GPU seconds per job in the scaling run: sleep-based, so two cores can host eight "GPUs".
SCALING_EXEC_S = 2.0
#: (scenario, figure, comparison, target, what the target says)
TARGETS: list[tuple[str, str, str, float, str]] = [
    ("pipelined", "busy_fraction", ">=", 0.98, "GPU busy fraction under backlog (exec 2 s, download 1 s, upload 1 s)"),
    ("pipelined", "idle_gap_median_ms", "<=", 50.0, "idle gap between consecutive prompts, median"),
    ("ready", "ready_to_reserved_median_ms", "<=", 150.0, "first 200 of /system_stats to first task reserved"),
    ("overhead", "overhead_p50_ms", "<=", 30.0, "added end-to-end overhead per job, p50 (zero exec, tiny media)"),
    ("conservation", "wait_to_start_max_ms", "<=", 500.0, "fewer jobs than idle GPUs: longest wait to start"),
    ("scaling", "speedup", ">=", 7.6, "8 simulated GPUs over 1, throughput"),
    ("memory", "rss_growth_mb", "<=", 64.0, "peak worker RSS growth while a 1 GB output goes to S3"),
    ("coldstart", "on_first_over_warm", "<=", 1.10, "first job after ready over a warm one, with the warm-up"),
    ("gateway", "added_p50_ms", "<=", 10.0, "gateway's added submit latency over the Python producer, p50"),
    ("gateway", "sse_delay_p50_ms", "<=", 250.0, "SSE progress event delay, worker's write to client, p50"),
]


def plan(root: Path, quick: bool) -> dict[str, Callable[[], dict[str, Any]]]:
    jobs = 4 if quick else 8
    return {
        "serial": lambda: scenarios.busy(root / "serial", 2.0, 1.0, 1.0, jobs, depth=0),
        "pipelined": lambda: scenarios.busy(root / "pipelined", 2.0, 1.0, 1.0, jobs, depth=1),
        "ready": lambda: scenarios.ready_latency(root / "ready", trials=3 if quick else 5),
        "overhead": lambda: scenarios.overhead(root / "overhead", jobs=10 if quick else 30),
        "conservation": lambda: scenarios.conservation(root / "conservation", rounds=2 if quick else 5),
        "scaling": lambda: _scaling(root, 4 if quick else 10),
        "memory": lambda: scenarios.memory(root / "memory", 1 << 30),
        "coldstart": lambda: coldstart.cold_start(root / "coldstart", load_s=1.0 if quick else coldstart.MODEL_LOAD_S,
                                                  warm_jobs=2 if quick else 3),
        "gateway": lambda: bench_gateway.gateway_latency(root / "gateway", jobs=10 if quick else 50,
                                                         sse_jobs=2 if quick else 5),
    }


def _scaling(root: Path, jobs_per_gpu: int) -> dict[str, Any]:
    one = scenarios.scaling(root / "scale1", 1, jobs_per_gpu, exec_s=SCALING_EXEC_S)
    eight = scenarios.scaling(root / "scale8", 8, jobs_per_gpu, exec_s=SCALING_EXEC_S)
    return {"one_gpu_jobs_per_s": one["jobs_per_s"], "eight_gpus_jobs_per_s": eight["jobs_per_s"],
            "speedup": round(eight["jobs_per_s"] / one["jobs_per_s"], 2)}


def verdicts(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    rows = []
    for scenario, figure, comparison, target, meaning in TARGETS:
        value = results.get(scenario, {}).get(figure)
        if value is None:
            continue
        ok = value >= target if comparison == ">=" else value <= target
        rows.append((meaning, f"{value} (target {comparison} {target})", "met" if ok else "MISSED"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="run only these scenarios (repeatable)")
    parser.add_argument("--quick", action="store_true", help="fewer jobs: a smoke run, not figures")
    parser.add_argument("--dir", type=Path, default=Path("var/bench"))
    args = parser.parse_args(argv)
    root = fresh_dir(args.dir.resolve())
    results: dict[str, dict[str, Any]] = {}
    for name, run in plan(root, args.quick).items():
        if args.only and name not in args.only:
            continue
        began = time.monotonic()
        results[name] = {**run(), "seconds": round(time.monotonic() - began, 1)}
        print(f"{name:<13} {json.dumps(results[name])}", flush=True)
    if "serial" in results and "pipelined" in results:
        results["pipelined"]["vs_serial"] = round(
            results["pipelined"]["busy_fraction"] / max(results["serial"]["busy_fraction"], 1e-9), 2)
    rows = verdicts(results)
    width = max((len(row[0]) for row in rows), default=0)
    print()
    for meaning, value, verdict in rows:
        print(f"{meaning:<{width}}  {value:<32} {verdict}")
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}"
    (root / "results.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    return 0 if all(verdict == "met" for _, _, verdict in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

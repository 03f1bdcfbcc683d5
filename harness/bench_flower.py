"""Flower at fleet scale: its memory under the event stream of 1,000 GPU workers stays bounded.

Flower keeps what it shows in one ``flower.events.EventsState`` (Celery's ``State`` plus Flower's task
search index and Prometheus series), fed every event the workers send. This check feeds that very
object, built with the limits ``dance flower`` gives it (``worker/telemetry/flower.py``), a synthetic
stream at the rate of :data:`FLEET_WORKERS` workers: a ``worker-heartbeat`` from each every
:data:`HEARTBEAT_S` (Celery's default) and a job per worker every :data:`JOB_EVERY_S` (four task events
each, with the kwargs and result sizes of a dance job). Simulated time runs faster than the wall clock;
what is measured is the process's RSS per simulated minute, in a process of its own
(``python -m harness.bench_flower``), so nothing else the benchmark holds shows in it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

from worker.telemetry.flower import FLOWER_MAX_TASKS, FLOWER_MAX_WORKERS

#: The fleet whose events are simulated.
FLEET_WORKERS = 1000
#: Celery's worker heartbeat period (``worker-heartbeat`` events), in seconds.
HEARTBEAT_S = 2.0
#: How often each worker ends a job, in seconds (a warm dance job; README's 15 s).
JOB_EVERY_S = 15.0
#: Simulated minutes fed by ``make bench`` and by ``--quick``: max_tasks fills in 2.5 of them, Celery's task
#: heap (four events per kept task) a little later, so the last third of either run is past both.
SIMULATED_MIN = 10
QUICK_SIMULATED_MIN = 6
#: The most Flower's RSS may still grow over the last third of the feed, in MiB: bounded, not leaking.
RSS_GROWTH_BOUND_MB = 8.0
#: RSS is sampled every this many simulated seconds.
SAMPLE_EVERY_S = 30
#: Sizes of a job's kwargs and result as Celery's events carry them (reprs), in bytes: URLs, presigned outputs.
KWARGS_REPR_BYTES = 700
RESULT_REPR_BYTES = 900
#: Timeout of the child process that feeds Flower, in seconds.
CHILD_TIMEOUT_S = 900.0


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _heartbeat(worker: int, now: float) -> dict[str, Any]:
    return {"type": "worker-heartbeat", "hostname": f"dance@gpu-{worker:04d}", "timestamp": now,
            "local_received": now, "clock": int(now * 10), "freq": HEARTBEAT_S, "sw_ident": "py-celery",
            "sw_ver": "5.7.0", "sw_sys": "Linux", "active": 1, "processed": int(now // JOB_EVERY_S),
            "loadavg": [0.5, 0.4, 0.3], "pid": 7}


def _job_events(worker: int, now: float) -> Iterator[dict[str, Any]]:
    job_id, hostname = str(uuid.uuid4()), f"dance@gpu-{worker:04d}"
    common = {"uuid": job_id, "clock": int(now * 10), "pid": 7}
    yield {"type": "task-sent", "hostname": "producer@api", "timestamp": now - 2, "local_received": now - 2,
           "name": "dance.generate", "queue": "dance", "args": "()", "kwargs": "x" * KWARGS_REPR_BYTES,
           "retries": 0, "eta": None, "expires": None, **common}
    yield {"type": "task-received", "hostname": hostname, "timestamp": now - 1, "local_received": now - 1,
           "name": "dance.generate", "args": "()", "kwargs": "x" * KWARGS_REPR_BYTES, "retries": 0,
           "eta": None, "expires": None, "root_id": job_id, "parent_id": None, **common}
    yield {"type": "task-started", "hostname": hostname, "timestamp": now - 1, "local_received": now - 1, **common}
    yield {"type": "task-succeeded", "hostname": hostname, "timestamp": now, "local_received": now,
           "result": "r" * RESULT_REPR_BYTES, "runtime": JOB_EVERY_S - 1, **common}


def feed(simulated_min: int) -> dict[str, Any]:
    """Feed Flower's state ``simulated_min`` minutes of the fleet's events; RSS per sample, in MiB."""
    import flower.options  # noqa: F401  (defines the options EventsState reads)
    from flower.events import EventsState

    state = EventsState(max_workers_in_memory=FLOWER_MAX_WORKERS, max_tasks_in_memory=FLOWER_MAX_TASKS)
    samples: list[tuple[int, float, int]] = [(0, round(_rss_mb(), 1), 0)]
    events, start = 0, 1_700_000_000.0
    for second in range(1, simulated_min * 60 + 1):
        now = start + second
        for worker in range(FLEET_WORKERS):
            # Each worker beats every HEARTBEAT_S and ends a job every JOB_EVERY_S, spread over the period.
            if (second + worker) % int(HEARTBEAT_S) == 0:
                state.event(_heartbeat(worker, now))
                events += 1
            if (second + worker) % int(JOB_EVERY_S) == 0:
                for event in _job_events(worker, now):
                    state.event(event)
                    events += 1
        if second % SAMPLE_EVERY_S == 0:
            samples.append((second, round(_rss_mb(), 1), len(state.tasks)))
    return {"events": events, "tasks_kept": len(state.tasks), "workers_kept": len(state.workers),
            "samples": samples}


def summarize(fed: dict[str, Any]) -> dict[str, Any]:
    """RSS at the start, when the task store first reached its limit and at the end; the growth over the
    feed's last third (which a bounded state does not have); memory per kept task."""
    samples = fed["samples"]
    at_cap = next((sample for sample in samples if sample[2] >= FLOWER_MAX_TASKS), samples[-1])
    last_third = next(sample for sample in samples if sample[0] >= samples[-1][0] * 2 // 3)
    per_task_kb = (at_cap[1] - samples[0][1]) * 1024 / max(1, at_cap[2])
    return {"flower_max_tasks": FLOWER_MAX_TASKS, "flower_max_workers": FLOWER_MAX_WORKERS,
            "flower_events_fed": fed["events"], "flower_simulated_min": samples[-1][0] // 60,
            "flower_events_per_s_simulated": round(fed["events"] / max(1, samples[-1][0]), 1),
            "flower_tasks_kept": fed["tasks_kept"], "flower_workers_kept": fed["workers_kept"],
            "flower_rss_start_mb": samples[0][1], "flower_rss_at_cap_mb": at_cap[1],
            "flower_rss_end_mb": samples[-1][1], "flower_kb_per_kept_task": round(per_task_kb, 1),
            "flower_rss_growth_last_third_mb": round(samples[-1][1] - last_third[1], 1),
            "flower_rss_mb_by_simulated_s": [[second, rss] for second, rss, _ in samples]}


def flower_memory(quick: bool) -> dict[str, Any]:
    """Run the feed in a fresh process and summarize its RSS."""
    minutes = QUICK_SIMULATED_MIN if quick else SIMULATED_MIN
    done = subprocess.run([sys.executable, "-m", "harness.bench_flower", "--child", str(minutes)],
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=True)
    return summarize(json.loads(done.stdout))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.bench_flower", description=__doc__.splitlines()[0])
    parser.add_argument("--child", type=int, metavar="MINUTES", help="feed this many simulated minutes, print JSON")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SIMULATED_MIN} simulated minutes")
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(feed(args.child)))
    else:
        print(json.dumps(flower_memory(args.quick), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What each GPU worker costs the one Redis, as the fleet grows: ``python -m harness.bench_fleet``.

For each fleet size it starts one redis-server and N real GPU workers (``dance worker``), measures Redis's
own counters over a fixed window, first idle, then under a backlog, and reports per worker: commands/s,
bytes/s in and out, and redis-server's CPU. A cost that stays flat from 1 to 32 workers has no term that
grows with the fleet (gossip, a view that reads every peer); :func:`flatness` fits it.

Lightweight on purpose, so that two cores hold 32 workers: media are a few kilobytes, and the backlog's
jobs outlast the window (:data:`BACKLOG_EXEC_S`), so a busy simulator only sleeps and what is measured is
the steady cost of a busy worker with work waiting. Each worker has a simulator of its own (76 MB and under
a CPU second to start): workers sharing one would not all be in the same state under the backlog (the
worker whose prompt runs stages a second job, those whose prompts wait in that ComfyUI's queue hold one),
and that alone moved the busy per-worker input bytes by 16 % between a fleet of one and of 32. The busy
window opens only once staging is over (:meth:`Fleet.wait_settled`). What staging and finishing a job cost
is measured apart (:func:`per_job`: short jobs on a small fleet) and added to the projection at one job per
:data:`PROJECTED_JOB_EVERY_S`.

Counters come from one raw ``INFO stats commandstats cpu`` round trip per sample, whose own bytes and
command are taken out of the deltas (an INFO reply is kilobytes: at one idle worker it would be a
visible share of the traffic).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import bench_flower
from harness.bench_cluster import ThrottledMedia, bench_media
from harness.bench_scenarios import request_for
from harness.local import fresh_dir, redis_service, simulator_service, wait_for_port, wait_for_redis, worker_service
from harness.processes import ManagedProcess, free_port, wait_until
from producer import keys
from producer.client import DanceClient
from producer.clusterview import read_records
from producer.settings import ProducerSettings
from worker.settings import DEFAULT_PIPELINE_DEPTH

#: Fleet sizes measured by ``make bench``, and by ``--quick``.
FLEET_SIZES = (1, 4, 16, 32)
QUICK_FLEET_SIZES = (1, 4)
#: Workers that share one simulated ComfyUI (1: each its own, so that every busy worker holds the same jobs).
WORKERS_PER_SIMULATOR = 1
#: Length of each measurement window, in seconds (and with --quick).
WINDOW_S = 20.0
QUICK_WINDOW_S = 6.0
#: Simulated execution time of a backlog job, in seconds: longer than any window, so none ends inside it.
BACKLOG_EXEC_S = 3600.0
#: Jobs queued per worker for the backlog: each worker holds BUSY_JOBS, the rest wait in Redis.
BACKLOG_JOBS_PER_WORKER = 3
#: Jobs a busy worker holds at the default pipeline depth: the executing one and the staged ones.
BUSY_JOBS = DEFAULT_PIPELINE_DEPTH + 1
#: How long a whole fleet may take to start and be ready on a loaded two-core machine, in seconds.
FLEET_READY_TIMEOUT_S = 420.0
#: The largest drift of the per-worker cost from the smallest fleet's that still counts as flat, in percent.
FLAT_TOLERANCE_PCT = 15.0
#: Share of one core redis-server may spend on the fleet in the capacity projection (BENCHMARKS.md).
CPU_BUDGET_CORES = 0.5
#: The raw INFO request one sample sends (RESP array: INFO stats commandstats cpu).
INFO_REQUEST = b"*4\r\n$4\r\nINFO\r\n$5\r\nstats\r\n$12\r\ncommandstats\r\n$3\r\ncpu\r\n"
#: The per-job cost is measured on this many workers running this many short jobs of this simulated length.
TURNOVER_WORKERS = 4
TURNOVER_JOBS = 40
TURNOVER_EXEC_S = 0.2
#: How often a GPU worker ends a job in the projection, in seconds (a warm dance job takes about 15 s).
PROJECTED_JOB_EVERY_S = 15.0
#: Socket timeout of a sample, in seconds.
SAMPLE_TIMEOUT_S = 10.0
#: The busy window opens once no job state was written (SETEX of the result backend) for this long, in
#: seconds, after every prompt is queued: the staging's last writes (STARTED, stage changes, a prompt's first
#: progress) are part of what a job costs (:func:`per_job`), not of what a busy worker costs per second.
SETTLE_S = 2.0
#: Pause between two looks at whether the fleet has settled, in seconds (each look asks every simulator).
SETTLE_POLL_S = 0.25
#: The prompts a full simulator holds once staging is over: one runs, its workers' other held jobs wait.
BUSY_PROMPTS = (1, WORKERS_PER_SIMULATOR * BUSY_JOBS - 1)

Figures = dict[str, Any]


@dataclass(frozen=True)
class BrokerSample:
    """Redis's counters at one instant, and the size of the INFO reply that carried them."""

    at_s: float
    commands: int
    input_bytes: int
    output_bytes: int
    cpu_s: float
    calls: dict[str, int]
    reply_bytes: int

    @staticmethod
    def read(port: int) -> BrokerSample:
        with socket.create_connection(("127.0.0.1", port), timeout=SAMPLE_TIMEOUT_S) as sock:
            sock.sendall(INFO_REQUEST)
            raw = _read_bulk(sock)
        fields: dict[str, str] = {}
        calls: dict[str, int] = {}
        for line in raw.decode().splitlines():
            name, _, value = line.partition(":")
            if name.startswith("cmdstat_"):
                calls[name.removeprefix("cmdstat_")] = int(value.split(",")[0].removeprefix("calls="))
            elif value:
                fields[name] = value
        return BrokerSample(time.monotonic(), int(fields["total_commands_processed"]),
                            int(fields["total_net_input_bytes"]), int(fields["total_net_output_bytes"]),
                            float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"]), calls, len(raw))


def _read_bulk(sock: socket.socket) -> bytes:
    """One RESP bulk string (``$<length>\\r\\n<data>\\r\\n``) from ``sock``."""
    buffer = b""
    while b"\r\n" not in buffer:
        buffer += sock.recv(65536)
    header, _, rest = buffer.partition(b"\r\n")
    length = int(header[1:])
    while len(rest) < length + 2:
        rest += sock.recv(65536)
    return rest[:length]


@dataclass(frozen=True)
class BrokerCost:
    """What Redis did between two samples, the samples' own traffic taken out."""

    span_s: float
    commands: int
    input_bytes: int
    output_bytes: int
    cpu_s: float
    #: Calls per command, those run inside scripts included (INFO commandstats), INFO itself left out.
    calls: dict[str, int]

    @staticmethod
    def between(start: BrokerSample, end: BrokerSample) -> BrokerCost:
        # The end sample's counters include the start sample's request and reply (one INFO command), and
        # its own request (read before INFO ran), not its own reply.
        calls = {name: count - start.calls.get(name, 0) for name, count in end.calls.items()
                 if name != "info" and count > start.calls.get(name, 0)}
        return BrokerCost(end.at_s - start.at_s, end.commands - start.commands - 1,
                          end.input_bytes - start.input_bytes - 2 * len(INFO_REQUEST),
                          end.output_bytes - start.output_bytes - start.reply_bytes, end.cpu_s - start.cpu_s, calls)

    def per_worker(self, workers: int) -> Figures:
        """Rates per second and per worker."""
        scale = 1 / (self.span_s * workers)
        top = sorted(self.calls.items(), key=lambda item: -item[1])[:8]
        return {"commands_per_s": round(self.commands * scale, 2),
                "calls_per_s": round(sum(self.calls.values()) * scale, 2),
                "input_bytes_per_s": round(self.input_bytes * scale, 1),
                "output_bytes_per_s": round(self.output_bytes * scale, 1),
                "redis_cpu_ms_per_s": round(self.cpu_s * 1000 * scale, 3),
                "top_calls_per_s": {name: round(count * scale, 2) for name, count in top}}


@dataclass
class Fleet:
    """One redis-server, N GPU workers and one simulator per :data:`WORKERS_PER_SIMULATOR` of them (each
    worker's gate, orphan sweep and prompts touch only its own prompts, so sharing one is harmless)."""

    root: Path
    size: int
    exec_s: float = BACKLOG_EXEC_S
    port: int = 0
    sims: list[str] = field(default_factory=list)
    processes: list[ManagedProcess] = field(default_factory=list)
    workers: list[ManagedProcess] = field(default_factory=list)

    @property
    def broker(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Fleet:
        logs, self.port = self.root / "logs", free_port()
        self.processes.append(redis_service("redis", self.port, self.root / "redis", logs).start())
        wait_for_redis(self.port, 15)
        for index in range(-(-self.size // WORKERS_PER_SIMULATOR)):
            sim_port = free_port()
            self.processes.append(simulator_service(f"sim{index}", sim_port, self.root / f"comfyui{index}", logs,
                                                    self.exec_s).start())
            wait_for_port(sim_port, 30, f"simulator {index}")
            self.sims.append(f"http://127.0.0.1:{sim_port}")
        for index in range(self.size):
            self._start_worker(index)
        wait_until(lambda: all(" ready." in worker.log() for worker in self.workers), FLEET_READY_TIMEOUT_S,
                   f"all {self.size} workers to be ready")
        return self

    def _start_worker(self, index: int) -> None:
        sim = index // WORKERS_PER_SIMULATOR
        env = {
            "CELERY_BROKER_URL": self.broker, "CELERY_RESULT_BACKEND": self.broker,
            "COMFYUI_URL": self.sims[sim], "DANCE_STORAGE_URL": (self.root / "storage").as_uri(),
            "COMFYUI_INPUT_DIR": str(self.root / f"comfyui{sim}" / "input"),
            "COMFYUI_OUTPUT_DIR": str(self.root / f"comfyui{sim}" / "output"),
            "DANCE_WORK_DIR": str(self.root / f"scratch{index}"), "DANCE_FETCH_ALLOW_HOSTS": "127.0.0.1",
        }
        worker = worker_service(f"gpu{index}", env, self.root / "logs").start()
        self.workers.append(worker)
        self.processes.append(worker)

    def client(self) -> DanceClient:
        return DanceClient(ProducerSettings(broker_url=self.broker, result_backend=self.broker,
                                            storage_url=(self.root / "storage").as_uri()))

    def every_worker_is_full(self, client: DanceClient) -> bool:
        """Every worker holds its executing job and the staged one: staging is over, the window may start
        (at 32 workers on two cores, staging the second jobs would otherwise spill into the window)."""
        records = read_records(client.redis, keys.WORKER_LIVENESS_PATTERN)
        return len(records) == self.size and all(len(record.get("jobs") or []) >= BUSY_JOBS for record in records)

    def prompts_queued(self) -> bool:
        """Every simulator runs one prompt and holds the staged ones: every held job got past its staging."""
        for sim in self.sims:
            with urllib.request.urlopen(f"{sim}/queue", timeout=SAMPLE_TIMEOUT_S) as response:
                queue = json.loads(response.read())
            if (len(queue["queue_running"]), len(queue["queue_pending"])) != BUSY_PROMPTS:
                return False
        return True

    def wait_settled(self, client: DanceClient, timeout_s: float = FLEET_READY_TIMEOUT_S) -> None:
        """Wait until the fleet is in its steady busy state: every worker holds its jobs, every prompt is
        queued, and no job state was written for SETTLE_S.

        Holding the jobs is not enough: a worker lists a job as soon as the message arrives, while the
        staged job still downloads, uploads and queues its prompt, and each step writes the job's state
        (a GET of the old meta, whose kilobyte-and-a-half comes back, then SETEX and PUBLISH). On two cores
        the staging of 16 or 32 workers ran into the window, and those writes alone were the busy
        worker's outgoing bytes that grew with the fleet (85 -> 241 B/s per worker from 1 to 32)."""
        deadline = time.monotonic() + timeout_s
        writes, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if self.every_worker_is_full(client) and self.prompts_queued():
                now, seen = time.monotonic(), BrokerSample.read(self.port).calls.get("setex", 0)
                if seen != writes:
                    writes, quiet_since = seen, now
                elif now - quiet_since >= SETTLE_S:
                    return
            else:
                writes = -1
            time.sleep(SETTLE_POLL_S)  # a poll of Redis and of every simulator: not every 20 ms on two cores
        raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for the {self.size} workers to settle")

    def stop(self) -> None:
        """SIGKILL everything: the backlog's jobs and Redis's data are thrown away anyway, and 32 workers
        that each drain a running job for their SIGTERM's grace would take minutes one after the other."""
        for process in reversed(self.processes):
            process.kill()


def measure_cost(port: int, window_s: float) -> BrokerCost:
    start = BrokerSample.read(port)
    time.sleep(window_s)  # the measurement window itself: Redis's counters run on, nothing to wait for
    return BrokerCost.between(start, BrokerSample.read(port))


def measure(port: int, window_s: float, workers: int) -> Figures:
    return measure_cost(port, window_s).per_worker(workers)


def one_fleet(root: Path, size: int, window_s: float) -> dict[str, Figures]:
    """Per-worker cost of a fleet of ``size`` workers, idle and then under a backlog."""
    fleet = Fleet(root, size).start()
    media = ThrottledMedia(bench_media(root / "media", tiny=True), bytes_per_s=None)
    try:
        idle = measure(fleet.port, window_s, size)
        with fleet.client() as client:
            for n in range(size * BACKLOG_JOBS_PER_WORKER):
                client.submit(request_for(media, seed=n))
            fleet.wait_settled(client)
            backlog = measure(fleet.port, window_s, size)
    finally:
        fleet.stop()
        media.close()
    return {"idle": idle, "backlog": backlog}


def per_job(root: Path, window_s: float) -> Figures:
    """What one job costs Redis beyond the workers' steady cost: TURNOVER_JOBS short jobs on a small fleet,
    the fleet's idle rate over the same span taken out."""
    fleet = Fleet(root, TURNOVER_WORKERS, exec_s=TURNOVER_EXEC_S).start()
    media = ThrottledMedia(bench_media(root / "media", tiny=True), bytes_per_s=None)
    try:
        start = BrokerSample.read(fleet.port)
        time.sleep(window_s)  # the idle window
        middle = BrokerSample.read(fleet.port)
        with fleet.client() as client:
            handles = [client.submit(request_for(media, seed=n)) for n in range(TURNOVER_JOBS)]
            for handle in handles:
                handle.result(timeout_s=FLEET_READY_TIMEOUT_S)
        busy = BrokerCost.between(middle, BrokerSample.read(fleet.port))
    finally:
        fleet.stop()
        media.close()
    idle = BrokerCost.between(start, middle)
    steady = busy.span_s / idle.span_s
    return {"jobs": TURNOVER_JOBS,
            "commands_per_job": round((busy.commands - idle.commands * steady) / TURNOVER_JOBS, 1),
            "input_bytes_per_job": round((busy.input_bytes - idle.input_bytes * steady) / TURNOVER_JOBS),
            "output_bytes_per_job": round((busy.output_bytes - idle.output_bytes * steady) / TURNOVER_JOBS),
            "redis_cpu_ms_per_job": round((busy.cpu_s - idle.cpu_s * steady) * 1000 / TURNOVER_JOBS, 3)}


def flatness(per_worker: dict[int, float]) -> Figures:
    """How far the per-worker cost moves from the smallest fleet's, and its least-squares slope per worker."""
    sizes = sorted(per_worker)
    base = per_worker[sizes[0]]
    drift_pct = max(abs(per_worker[n] / base - 1) for n in sizes) * 100 if base else 0.0
    mean_n = sum(sizes) / len(sizes)
    mean_v = sum(per_worker.values()) / len(sizes)
    spread = sum((n - mean_n) ** 2 for n in sizes)
    slope = sum((n - mean_n) * (per_worker[n] - mean_v) for n in sizes) / spread if spread else 0.0
    return {"drift_pct": round(drift_pct, 1), "slope_per_worker": round(slope, 4),
            "slope_pct_of_base_per_worker": round(slope / base * 100, 3) if base else 0.0,
            "intercept": round(mean_v - slope * mean_n, 4)}


#: The per-worker figures whose flatness is judged.
JUDGED = ("commands_per_s", "input_bytes_per_s", "output_bytes_per_s")


def fit(by_size: dict[int, dict[str, Figures]], jobs: Figures | None = None) -> Figures:
    """The figures ``make bench`` prints and judges: per phase the worst drift, the fits, and the projection
    (with ``jobs``, each worker also ends a job every PROJECTED_JOB_EVERY_S)."""
    out: Figures = {}
    for phase in ("idle", "backlog"):
        fits = {figure: flatness({n: by_size[n][phase][figure] for n in by_size}) for figure in JUDGED}
        out[f"{phase}_fit"] = fits
        out[f"{phase}_drift_pct"] = max(fit_["drift_pct"] for fit_ in fits.values())
    # redis-server's CPU: a fixed part (its own cron, 10 times a second) and a part per worker. The
    # least-squares line through the fleets' totals separates them; the projection spends the budget left
    # after the fixed part on the busier phase's cost per worker.
    sizes, fixed_ms = sorted(by_size), 0.0
    for phase in ("idle", "backlog"):
        total_ms = {n: by_size[n][phase]["redis_cpu_ms_per_s"] * n for n in sizes}
        line = flatness(total_ms) if len(sizes) > 1 else {"slope_per_worker": total_ms[sizes[0]], "intercept": 0.0}
        out[f"{phase}_redis_cpu_ms_per_worker_s"] = round(line["slope_per_worker"], 3)
        fixed_ms = max(fixed_ms, line["intercept"])
    marginal_ms = max(out["idle_redis_cpu_ms_per_worker_s"], out["backlog_redis_cpu_ms_per_worker_s"])
    if jobs is not None:
        marginal_ms += max(0.0, jobs["redis_cpu_ms_per_job"]) / PROJECTED_JOB_EVERY_S
        out["projected_redis_cpu_ms_per_worker_s"] = round(marginal_ms, 3)
    out["redis_cpu_fixed_ms_s"] = round(fixed_ms, 3)
    out["workers_at_half_core"] = int((CPU_BUDGET_CORES * 1000 - fixed_ms) / marginal_ms) if marginal_ms > 0 else None
    return out


def describe(size: int, phases: dict[str, Figures]) -> str:
    """One line per fleet size: what each worker costs Redis, idle and busy."""
    parts = [f"{phase} {f['commands_per_s']:.1f} cmd/s {f['input_bytes_per_s']:.0f} B/s in "
             f"{f['output_bytes_per_s']:.0f} B/s out {f['redis_cpu_ms_per_s']:.2f} ms CPU/s"
             for phase, f in phases.items()]
    return f"  fleet of {size:>2}, per worker: " + "; ".join(parts)


def fleet(root: Path, quick: bool) -> Figures:
    """The ``fleet`` scenario of ``make bench``: broker cost per worker at each size, and Flower's memory."""
    sizes, window_s = (QUICK_FLEET_SIZES, QUICK_WINDOW_S) if quick else (FLEET_SIZES, WINDOW_S)
    by_size = {size: one_fleet(root / f"n{size}", size, window_s) for size in sizes}
    for size, phases in by_size.items():
        print(describe(size, phases), flush=True)
    jobs = per_job(root / "turnover", window_s)
    print(f"  per job, beyond the steady cost: {json.dumps(jobs)}", flush=True)
    return {"sizes": list(sizes), "window_s": window_s, "per_worker": {str(n): v for n, v in by_size.items()},
            **fit(by_size, jobs), "per_job": jobs, **bench_flower.flower_memory(quick)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.bench_fleet", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fleets of 1 and 4, short windows: a smoke run")
    parser.add_argument("--sizes", type=lambda text: tuple(int(n) for n in text.split(",")),
                        help="comma-separated fleet sizes (default 1,4,16,32)")
    parser.add_argument("--dir", type=Path, default=Path("var/bench-fleet"))
    args = parser.parse_args(argv)
    root = fresh_dir(args.dir.resolve())
    if args.sizes:
        by_size = {size: one_fleet(root / f"n{size}", size, WINDOW_S) for size in args.sizes}
        results: Figures = {"per_worker": {str(n): v for n, v in by_size.items()}, **fit(by_size)}
    else:
        results = fleet(root, args.quick)
    print(json.dumps(results, indent=2))
    (root / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``make chaos``: a bounded, self-stopping fault run on loopback.

60 jobs go to 3 workers, each paired with its own ComfyUI simulator; one simulator's jobs last 2.5 visibility
timeouts. A chaos monkey kill -9s random workers and simulators and SIGTERMs workers (rolling restarts, with
a drain longer than any job), Redis goes away for twice the lease TTL once mid-run, and a supervisor restarts
whatever died (as a container restart policy would). At the end it prints what happened to every job:
submitted, succeeded, failed by code, lost, jobs that ran on two GPUs at once (from the simulators' own run
records), wasted GPU runs by cause and duplicate result writes, plus the time from each death to the job's
redelivery. It exits non-zero if a job was lost, ran on two GPUs at once, or had its result written twice.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from demo.samples import make_character_png, make_dance_mp4
from harness.chaos_report import Report, Watcher, collect, render
from harness.chaos_runs import RunBook
from harness.local import fresh_dir, redis_service, simulator_service, wait_for_redis, worker_service
from harness.processes import ManagedProcess, free_port
from producer.client import DanceClient
from producer.settings import ProducerSettings
from worker.storage import open_storage

#: Supervisor period and the delay before a dead process is restarted, in seconds.
SUPERVISE_EVERY_S = 0.5
RESTART_DELAY_S = 1.0


@dataclass(frozen=True)
class ChaosSettings:
    jobs: int = 60
    workers: int = 3
    #: Simulated GPU seconds per job.
    exec_s: float = 0.5
    #: Visibility timeout of the workers, in seconds: bounds the redelivery of a dead worker's job; it is
    #: also the lease TTL (DANCE_LEASE_TTL_S is left unset).
    visibility_timeout_s: float = 10.0
    #: Simulators whose jobs are long (the first ones), and their GPU seconds per job: 2.5 visibility timeouts.
    long_simulators: int = 1
    long_exec_s: float = 25.0
    #: How long a SIGTERM'd worker lets its job go on (DANCE_DRAIN_S), in seconds: longer than any job.
    drain_s: float = 40.0
    #: Pause between two faults, drawn uniformly from this range, in seconds.
    kill_every_s: tuple[float, float] = (4.0, 9.0)
    #: Fraction of finished jobs at which Redis goes away.
    redis_restart_at: float = 0.5
    #: How long Redis stays away, in lease TTLs.
    redis_outage_ttls: float = 2.0
    #: The whole run stops after this, in seconds, whatever state the jobs are in.
    timeout_s: float = 600.0
    seed: int = 7
    state_dir: Path = Path("var/chaos")


@dataclass
class Cluster:
    redis: ManagedProcess
    redis_url: str
    simulators: list[ManagedProcess] = field(default_factory=list)
    workers: list[ManagedProcess] = field(default_factory=list)
    #: ManagedProcesss the supervisor leaves alone until this monotonic time (set when killed).
    down_until: dict[str, float] = field(default_factory=dict)
    sim_ports: dict[str, int] = field(default_factory=dict)

    def services(self) -> list[ManagedProcess]:
        return [self.redis, *self.simulators, *self.workers]


def start_cluster(settings: ChaosSettings) -> Cluster:
    root = fresh_dir(settings.state_dir.resolve())
    logs = root / "logs"
    port = free_port()
    cluster = Cluster(redis_service("redis", port, root / "redis", logs, aof=True).start(),
                      f"redis://127.0.0.1:{port}/0")
    wait_for_redis(port, 15)
    for index in range(settings.workers):
        sim_port = free_port()
        exec_s = settings.long_exec_s if index < settings.long_simulators else settings.exec_s
        # The exec time is a command-line option, not a fault, so a restarted simulator keeps it.
        sim = simulator_service(f"sim{index}", sim_port, root / f"comfyui{index}", logs, exec_s)
        cluster.sim_ports[sim.name] = sim_port
        cluster.simulators.append(sim.start())
        env = {
            "CELERY_BROKER_URL": cluster.redis_url, "CELERY_RESULT_BACKEND": cluster.redis_url,
            "COMFYUI_URL": f"http://127.0.0.1:{sim_port}", "DANCE_STORAGE_URL": (root / "storage").as_uri(),
            "COMFYUI_INPUT_DIR": str(root / f"comfyui{index}" / "input"),
            "COMFYUI_OUTPUT_DIR": str(root / f"comfyui{index}" / "output"),
            "DANCE_VISIBILITY_TIMEOUT_S": str(settings.visibility_timeout_s), "DANCE_WORK_DIR": str(root / f"w{index}"),
            "DANCE_MAX_ATTEMPTS": "10", "DANCE_DRAIN_S": str(settings.drain_s),
        }
        cluster.workers.append(worker_service(f"worker{index}", env, logs).start())
    return cluster


def supervise(cluster: Cluster, stop: threading.Event) -> None:
    """Restart whatever died, after a short delay, like `restart: unless-stopped`."""
    while not stop.wait(SUPERVISE_EVERY_S):
        now = time.monotonic()
        for service in cluster.services():
            if not service.alive and now >= cluster.down_until.get(service.name, 0.0):
                service.start()


def monkey(cluster: Cluster, settings: ChaosSettings, watcher: Watcher, book: RunBook,
           stop: threading.Event) -> None:
    rand = random.Random(settings.seed)
    while not stop.wait(rand.uniform(*settings.kill_every_s)):
        index = rand.randrange(settings.workers)
        target = rand.choice(("worker", "simulator", "term"))
        service = cluster.simulators[index] if target == "simulator" else cluster.workers[index]
        if not service.alive:
            continue
        jobs = watcher.jobs_on(f"worker{index}")
        cluster.down_until[service.name] = time.monotonic() + RESTART_DELAY_S
        if target == "term":
            # A rolling restart: the worker drains (its job goes on) and exits; the supervisor restarts it.
            service.signal(signal.SIGTERM)
            book.fault("term", service.name, time.time())
            watcher.note(f"SIGTERM {service.name} (running {', '.join(jobs) or 'nothing'})")
            continue
        if target == "simulator":
            book.poll(service.name)  # its records die with it
        service.kill()
        book.fault("kill", service.name, time.time())
        if target == "simulator":
            book.simulator_killed(service.name, time.time())
        watcher.killed(target, service.name, jobs)


def redis_outage_once(cluster: Cluster, settings: ChaosSettings, watcher: Watcher, book: RunBook,
                      stop: threading.Event) -> None:
    """Stop Redis for twice the lease TTL; the supervisor starts it again on the same port and AOF."""
    outage_s = settings.redis_outage_ttls * settings.visibility_timeout_s
    while not stop.wait(1.0):
        if watcher.finished_fraction() >= settings.redis_restart_at:
            cluster.down_until["redis"] = time.monotonic() + outage_s
            at = time.time()
            cluster.redis.stop()  # SIGTERM: Redis writes its AOF and exits, as `docker stop` does
            book.fault("redis", "redis", at, at + outage_s)
            watcher.note(f"redis stopped for {outage_s:.0f}s")
            return


def stage_media(settings: ChaosSettings, storage_url: str) -> tuple[str, str]:
    samples = settings.state_dir.resolve() / "samples"
    image = make_character_png(samples / "character.png", width_px=128, height_px=224)
    video = make_dance_mp4(samples / "dance.mp4", frames=12, width_px=64, height_px=112)
    storage = open_storage(storage_url)
    return (storage.put_file("chaos-media/character.png", image, "image/png").uri,
            storage.put_file("chaos-media/dance.mp4", video, "video/mp4").uri)


def run(settings: ChaosSettings) -> Report:
    cluster = start_cluster(settings)
    storage_url = (settings.state_dir.resolve() / "storage").as_uri()
    image, video = stage_media(settings, storage_url)
    client = DanceClient(ProducerSettings(broker_url=cluster.redis_url, result_backend=cluster.redis_url,
                                          storage_url=storage_url))
    ids = [f"chaos-{n:04d}" for n in range(settings.jobs)]
    for job_id in ids:
        client.submit({"reference_image": image, "dance_video": video, "prompt": f"job {job_id}",
                       "width": 128, "height": 224, "steps": 2, "seed": 1}, job_id=job_id)
    watcher = Watcher(client, redis.Redis.from_url(cluster.redis_url), ids)
    book = RunBook(dict(cluster.sim_ports))
    stop = threading.Event()
    threads = [threading.Thread(target=fn, args=args, daemon=True) for fn, args in (
        (supervise, (cluster, stop)), (monkey, (cluster, settings, watcher, book, stop)),
        (redis_outage_once, (cluster, settings, watcher, book, stop)), (watcher.run, (stop,)), (book.run, (stop,)),
    )]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    try:
        watcher.wait_all(settings.timeout_s)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        book.poll_all()
        report = collect(watcher, book, time.monotonic() - started, [worker.log_path for worker in cluster.workers],
                         settings.drain_s)
        # Every GPU run, for a look at an overlap or a wasted run after the fact.
        runs = [asdict(gpu_run) for gpu_run in sorted(book.runs.values(), key=lambda r: r.started_at)]
        (settings.state_dir / "runs.json").write_text(json.dumps(runs, indent=1))
        for service in reversed(cluster.services()):  # workers first: they still talk to the rest
            service.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=ChaosSettings.jobs)
    parser.add_argument("--workers", type=int, default=ChaosSettings.workers)
    parser.add_argument("--seed", type=int, default=ChaosSettings.seed)
    parser.add_argument("--timeout-s", type=float, default=ChaosSettings.timeout_s)
    parser.add_argument("--long-exec-s", type=float, default=ChaosSettings.long_exec_s,
                        help="GPU seconds of the jobs on the long simulators")
    parser.add_argument("--long-simulators", type=int, default=ChaosSettings.long_simulators)
    args = parser.parse_args(argv)
    settings = ChaosSettings(jobs=args.jobs, workers=args.workers, seed=args.seed, timeout_s=args.timeout_s,
                             long_exec_s=args.long_exec_s, long_simulators=args.long_simulators)
    report = run(settings)
    print(render(report))
    out = settings.state_dir / "report.json"
    out.write_text(json.dumps(asdict(report), indent=2))
    print(f"\nreport: {out}")
    clean = report.lost == 0 and report.duplicate_result_writes == 0 and not report.overlapping_runs
    return 0 if clean else 1


def _main() -> Any:
    sys.exit(main())


if __name__ == "__main__":
    _main()

"""``make chaos``: a bounded, self-stopping fault run on loopback.

200 jobs go to 3 workers, each paired with its own ComfyUI simulator. A chaos monkey kill -9s random
workers and simulators, Redis restarts once mid-run, and a supervisor restarts whatever died (as a
container restart policy would). At the end it prints what happened to every job: submitted,
succeeded, failed by code, lost, duplicate GPU executions and duplicate result writes, plus the time
from each death to the job's redelivery. It exits non-zero if a job was lost or a result written twice.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from demo.samples import make_character_png, make_dance_mp4
from harness.chaos_report import Report, Watcher, collect, render
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
    jobs: int = 200
    workers: int = 3
    #: Simulated GPU seconds per job.
    exec_s: float = 0.5
    #: Visibility timeout of the workers, in seconds: bounds the redelivery of a dead worker's job.
    visibility_timeout_s: float = 10.0
    #: Pause between two kills, drawn uniformly from this range, in seconds.
    kill_every_s: tuple[float, float] = (4.0, 9.0)
    #: Fraction of finished jobs at which Redis restarts.
    redis_restart_at: float = 0.5
    #: The whole run stops after this, in seconds, whatever state the jobs are in.
    timeout_s: float = 900.0
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
        sim = simulator_service(f"sim{index}", sim_port, root / f"comfyui{index}", logs, settings.exec_s)
        cluster.simulators.append(sim.start())
        env = {
            "CELERY_BROKER_URL": cluster.redis_url, "CELERY_RESULT_BACKEND": cluster.redis_url,
            "COMFYUI_URL": f"http://127.0.0.1:{sim_port}", "DANCE_STORAGE_URL": (root / "storage").as_uri(),
            "COMFYUI_INPUT_DIR": str(root / f"comfyui{index}" / "input"),
            "COMFYUI_OUTPUT_DIR": str(root / f"comfyui{index}" / "output"),
            "DANCE_VISIBILITY_TIMEOUT_S": str(settings.visibility_timeout_s), "DANCE_WORK_DIR": str(root / f"w{index}"),
            "DANCE_MAX_ATTEMPTS": "10",
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


def monkey(cluster: Cluster, settings: ChaosSettings, watcher: Watcher, stop: threading.Event) -> None:
    rand = random.Random(settings.seed)
    while not stop.wait(rand.uniform(*settings.kill_every_s)):
        index = rand.randrange(settings.workers)
        target = rand.choice(("worker", "simulator"))
        service = cluster.workers[index] if target == "worker" else cluster.simulators[index]
        if not service.alive:
            continue
        jobs = watcher.jobs_on(f"worker{index}")
        cluster.down_until[service.name] = time.monotonic() + RESTART_DELAY_S
        service.kill()
        watcher.killed(target, service.name, jobs)


def restart_redis_once(cluster: Cluster, settings: ChaosSettings, watcher: Watcher, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        if watcher.finished_fraction() >= settings.redis_restart_at:
            cluster.down_until["redis"] = time.monotonic() + RESTART_DELAY_S
            cluster.redis.stop()  # SIGTERM: Redis writes its AOF and exits, as `docker restart` does
            watcher.note("redis restarted")
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
    stop = threading.Event()
    threads = [threading.Thread(target=fn, args=args, daemon=True) for fn, args in (
        (supervise, (cluster, stop)), (monkey, (cluster, settings, watcher, stop)),
        (restart_redis_once, (cluster, settings, watcher, stop)), (watcher.run, (stop,)),
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
        report = collect(watcher, time.monotonic() - started, [worker.log_path for worker in cluster.workers])
        for service in reversed(cluster.services()):  # workers first: they still talk to the rest
            service.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=ChaosSettings.jobs)
    parser.add_argument("--workers", type=int, default=ChaosSettings.workers)
    parser.add_argument("--seed", type=int, default=ChaosSettings.seed)
    parser.add_argument("--timeout-s", type=float, default=ChaosSettings.timeout_s)
    args = parser.parse_args(argv)
    settings = ChaosSettings(jobs=args.jobs, workers=args.workers, seed=args.seed, timeout_s=args.timeout_s)
    report = run(settings)
    print(render(report))
    out = settings.state_dir / "report.json"
    out.write_text(json.dumps(asdict(report), indent=2))
    print(f"\nreport: {out}")
    return 0 if report.lost == 0 and report.duplicate_result_writes == 0 else 1


def _main() -> Any:
    sys.exit(main())


if __name__ == "__main__":
    _main()

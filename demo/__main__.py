"""``make demo``: a whole cluster on this machine, one dance job through it, and where to look.

Starts a private Redis, the ComfyUI simulator (or uses a real ComfyUI when COMFYUI_URL is set), one
readiness-gated worker, Flower and the HTTP gateway (on loopback, with a generated API key); makes sample
media; submits a job with the local files (the producer puts them into the embedded file storage), shows
its progress, and prints the video's path, the Flower URL, the gateway URL and a curl line that reads the
job through the gateway, which the demo runs itself first. On a terminal it then keeps the cluster up
until Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import uuid
from pathlib import Path

from demo.gateway import DemoGateway, adopt_job, start_gateway
from demo.samples import make_character_png, make_dance_mp4
from harness.local import redis_service, simulator_service, wait_for_redis, worker_service
from harness.processes import ManagedProcess, free_port
from producer.client import DanceClient
from producer.errors import DanceError
from producer.progressbar import ProgressLine
from producer.settings import ProducerSettings

#: Everything the demo writes goes below this folder.
STATE_DIR = Path(os.environ.get("DEMO_DIR", "var/demo")).resolve()
#: Port Flower prefers; a free one is used when it is taken.
FLOWER_PORT = 5555
#: Simulated seconds of GPU work for the demo job, and the simulator's start delay, in seconds:
#: long enough to watch the gate hold and the progress bar move.
SIM_EXEC_S = 4.0
SIM_START_DELAY_S = 3.0
#: How long the demo waits for its job, in seconds.
JOB_TIMEOUT_S = 300.0


class Services:
    """The demo's child processes, stopped together."""

    def __init__(self) -> None:
        self.children: list[ManagedProcess] = []

    def start(self, service: ManagedProcess) -> ManagedProcess:
        self.children.append(service.start())
        print(f"  started {service.name:<11} (log: {service.log_path})")
        return service

    def stop(self) -> None:
        for service in reversed(self.children):
            service.stop()


def start_cluster(services: Services) -> tuple[dict[str, str], str, DemoGateway]:
    logs = STATE_DIR / "logs"
    redis_port = free_port()
    services.start(redis_service("redis", redis_port, STATE_DIR, logs))
    wait_for_redis(redis_port, 15)
    broker = f"redis://127.0.0.1:{redis_port}/0"
    env = {"CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": broker,
           "DANCE_STORAGE_URL": (STATE_DIR / "storage").as_uri(), "PYTHONUNBUFFERED": "1"}
    comfyui_url = os.environ.get("COMFYUI_URL")
    if comfyui_url is None:
        sim_port = free_port()
        comfyui_url = f"http://127.0.0.1:{sim_port}"
        services.start(simulator_service("comfyui-sim", sim_port, STATE_DIR / "comfyui", logs, SIM_EXEC_S,
                                         start_delay_s=SIM_START_DELAY_S))
        env["COMFYUI_INPUT_DIR"] = str(STATE_DIR / "comfyui" / "input")
    env["COMFYUI_URL"] = comfyui_url
    services.start(worker_service("demo", env, logs))
    flower_port = free_port(FLOWER_PORT)
    password = secrets.token_urlsafe(9)
    services.start(ManagedProcess("flower", [sys.executable, "-m", "producer.cli", "flower",
                                             f"--port={flower_port}", "--address=127.0.0.1",
                                             f"--basic-auth=dance:{password}", "--persistent=False"],
                                  logs / "flower.log", env=env))
    gateway = start_gateway(services.start, env, logs)
    return env, f"http://127.0.0.1:{flower_port}  (user dance, password {password})", gateway


def run_job(env: dict[str, str], gateway: DemoGateway) -> int:
    samples = STATE_DIR / "samples"
    image = make_character_png(samples / "character.png")
    video = make_dance_mp4(samples / "dance.mp4", frames=48)
    settings = ProducerSettings(broker_url=env["CELERY_BROKER_URL"], result_backend=env["CELERY_RESULT_BACKEND"],
                                storage_url=env["DANCE_STORAGE_URL"], wait_timeout_s=JOB_TIMEOUT_S)
    request = {"reference_image": str(image), "dance_video": str(video), "width": 256, "height": 448,
               "prompt": "a cheerful character dancing on a stage", "steps": 6}
    with DanceClient(settings) as client:
        job_id = uuid.uuid4().hex
        adopt_job(client, job_id)
        handle = client.submit(request, job_id=job_id)
        print(f"\nsubmitted job {handle.id}; the worker takes it once ComfyUI is ready")
        line = ProgressLine(sys.stdout)
        try:
            result = handle.result(on_progress=line.update)
        except DanceError as exc:
            line.close()
            print(f"the job failed: {exc}")
            return 1
        line.close()
    videos = [item for item in result["outputs"] if item["kind"] == "video"]
    for item in videos or result["outputs"]:
        print(f"\nresult {item['kind']}: {item['uri'].removeprefix('file://')}  ({item['bytes']} bytes)")
    print(f"manifest: {result['manifest']['uri'].removeprefix('file://')}")
    print(f"timings: {result['timings']}")
    return gateway.check_job(handle.id, result)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"starting a local dance cluster in {STATE_DIR}")
    services = Services()
    try:
        env, flower, gateway = start_cluster(services)
        status = run_job(env, gateway)
        print(f"Flower: {flower}")
        print(gateway.describe())
        if sys.stdin.isatty() and os.environ.get("DEMO_KEEP_RUNNING", "1") == "1":
            print("\nthe cluster keeps running; press Ctrl-C to stop it")
            signal.pause()
        return status
    except KeyboardInterrupt:
        return 130
    finally:
        print("stopping the cluster")
        services.stop()


if __name__ == "__main__":
    sys.exit(main())

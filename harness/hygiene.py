"""``python -m harness.hygiene``: run many jobs through one worker and show that nothing piles up.

After N jobs (500 by default), ComfyUI's history and queue should hold nothing of ours, and disk use
should be flat: the inputs the worker uploaded, the outputs it fetched and its scratch files are gone.
Only the result storage grows, by design.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from demo.samples import make_character_png, make_dance_mp4
from harness.local import fresh_dir, redis_service, simulator_service, wait_for_port, wait_for_redis, worker_service
from harness.processes import free_port
from producer.client import DanceClient
from producer.settings import ProducerSettings
from worker.cleanup import INPUT_PREFIX
from worker.storage import open_storage

#: Simulated GPU seconds per job: short, this run is about bookkeeping, not speed.
EXEC_S = 0.02
#: Jobs submitted per batch while the run keeps a bounded backlog.
BACKLOG = 20


def folder_usage(folder: Path, prefix: str = "") -> tuple[int, int]:
    """(files, bytes) below ``folder`` whose names start with ``prefix``."""
    files = [p for p in folder.rglob(f"{prefix}*") if p.is_file()] if folder.exists() else []
    return len(files), sum(p.stat().st_size for p in files)


def comfy_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def measure(root: Path, comfyui_url: str) -> dict[str, Any]:
    history = comfy_json(f"{comfyui_url}/history")
    queue = comfy_json(f"{comfyui_url}/queue")
    return {
        "history_entries": len(history),
        "queue_items": len(queue["queue_running"]) + len(queue["queue_pending"]),
        # ComfyUI's own example.png stays; ours all start with INPUT_PREFIX.
        "comfyui_input": folder_usage(root / "comfyui" / "input", INPUT_PREFIX),
        "comfyui_output": folder_usage(root / "comfyui" / "output"),
        "worker_scratch": folder_usage(root / "scratch"),
        "result_storage": folder_usage(root / "storage"),
    }


def run(jobs: int, root: Path) -> dict[str, Any]:
    logs, redis_port, sim_port = root / "logs", free_port(), free_port()
    broker, comfyui_url = f"redis://127.0.0.1:{redis_port}/0", f"http://127.0.0.1:{sim_port}"
    services = [redis_service("redis", redis_port, root / "redis", logs).start(),
                simulator_service("sim", sim_port, root / "comfyui", logs, EXEC_S).start()]
    wait_for_redis(redis_port, 15)
    env = {"CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": broker, "COMFYUI_URL": comfyui_url,
           "DANCE_STORAGE_URL": (root / "storage").as_uri(), "DANCE_WORK_DIR": str(root / "scratch"),
           "COMFYUI_INPUT_DIR": str(root / "comfyui" / "input"), "COMFYUI_OUTPUT_DIR": str(root / "comfyui" / "output")}
    services.append(worker_service("hygiene", env, logs).start())
    try:
        storage = open_storage(env["DANCE_STORAGE_URL"])
        image = storage.put_file("media/character.png", make_character_png(root / "character.png", 128, 224),
                                 "image/png").uri
        video = storage.put_file("media/dance.mp4", make_dance_mp4(root / "dance.mp4", 12, 64, 112),
                                 "video/mp4").uri
        client = DanceClient(ProducerSettings(broker_url=broker, result_backend=broker,
                                              storage_url=env["DANCE_STORAGE_URL"]))
        request = {"reference_image": image, "dance_video": video, "prompt": "hygiene", "width": 128, "height": 224}
        wait_for_port(sim_port, 30, "the simulator")
        started = time.monotonic()
        for first in range(0, jobs, BACKLOG):
            handles = [client.submit(request) for _ in range(first, min(jobs, first + BACKLOG))]
            for handle in handles:
                handle.result(timeout_s=120)
        return {"jobs": jobs, "seconds": round(time.monotonic() - started, 1), "after": measure(root, comfyui_url)}
    finally:
        for service in reversed(services):
            service.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.hygiene", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=Path("var/hygiene"))
    args = parser.parse_args(argv)
    report = run(args.jobs, fresh_dir(args.dir.resolve()))
    after = report["after"]
    print(f"after {report['jobs']} jobs in {report['seconds']}s:")
    for name, value in after.items():
        shown = f"{value[0]} files, {value[1]} bytes" if isinstance(value, tuple) else value
        print(f"  {name:<16} {shown}")
    clean = (after["history_entries"] == 0 and after["queue_items"] == 0 and after["comfyui_input"][0] == 0
             and after["comfyui_output"][0] == 0 and after["worker_scratch"][0] == 0)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())

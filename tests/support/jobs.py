"""Requests built from the project's own sample media, served over real HTTP, and Redis queue probes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from demo.samples import make_character_png, make_dance_mp4
from producer.celeryconf import PRIORITY_SEPARATOR, PRIORITY_STEPS

#: Small media keep the simulated pipeline fast on two cores.
SAMPLE_WIDTH_PX, SAMPLE_HEIGHT_PX = 128, 224


def sample_media(folder: Path) -> tuple[bytes, bytes]:
    image = make_character_png(folder / "character.png", width_px=SAMPLE_WIDTH_PX, height_px=SAMPLE_HEIGHT_PX)
    video = make_dance_mp4(folder / "dance.mp4", frames=12, width_px=64, height_px=112)
    return image.read_bytes(), video.read_bytes()


def dance_request(media_server: Any, folder: Path, **overrides: Any) -> dict[str, Any]:
    """A valid request whose media the loopback media server serves."""
    image, video = sample_media(folder)
    request = {
        "reference_image": media_server.serve("/character.png", image, content_type="image/png"),
        "dance_video": media_server.serve("/dance.mp4", video, content_type="video/mp4"),
        "prompt": "a character dancing",
        "width": SAMPLE_WIDTH_PX,
        "height": SAMPLE_HEIGHT_PX,
        "steps": 3,
        "seed": 1234,
    }
    request.update(overrides)
    return request


def one_running_one_staged(sim: Any) -> bool:
    """Whether ComfyUI runs one prompt while exactly one more waits behind it.

    A bare "one pending" is not enough: right after the first POST /prompt the first prompt itself sits in
    ``queue_pending`` until ComfyUI's executor thread takes it, so a test acting on that moment acts before
    the second prompt even exists (a clear of the queue then removes nothing).
    """
    queue = sim.request("GET", "/queue")
    return len(queue["queue_running"]) == 1 and len(queue["queue_pending"]) == 1


def queued_messages(broker_url: str, queue: str = "dance") -> int:
    """Messages waiting in ``queue`` across all its priority lists (kombu keeps one list per level)."""
    client = redis.Redis.from_url(broker_url)
    names = [queue] + [f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS if step]
    return sum(int(client.llen(name)) for name in names)


def job_counter(broker_url: str, key: str) -> int:
    """A per-job counter the worker keeps (attempts, GPU runs, manifest writes; producer/keys.py)."""
    return int(redis.Redis.from_url(broker_url).get(key) or 0)


def unacked_messages(broker_url: str) -> int:
    """Messages some worker reserved and has not acknowledged (kombu's ``unacked`` hash)."""
    return int(redis.Redis.from_url(broker_url).hlen("unacked"))

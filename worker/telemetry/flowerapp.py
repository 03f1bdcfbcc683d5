"""The Celery app Flower watches the cluster through: ``celery -A worker.telemetry.flowerapp flower``.

It carries the configuration producers and workers share (broker, result backend, priority lists, JSON
only) and nothing of the GPU worker: a monitoring host needs the ``flower`` extra alone, not the ComfyUI
client or storage. Settings are read from the environment when Celery first configures the app.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from producer.celeryconf import LazyConfig, shared_config
from producer.settings import ProducerSettings


def flower_config(settings: ProducerSettings) -> dict[str, Any]:
    # Flower writes no results, so their expiry (0: Celery's default) does not matter here.
    config = shared_config(settings.broker_url, settings.result_backend, 0, settings.sentinel_master)
    # Flower's broker page lists the default queue while no worker reports its queues.
    config["task_default_queue"] = settings.default_queue
    return config


app = Celery("dance", set_as_current=False)
app.config_from_object(LazyConfig(lambda: flower_config(ProducerSettings.from_env())))

"""Flower's config file for this cluster: ``celery -A worker.telemetry.flowerapp flower --conf=<this file>``.

``dance flower`` runs exactly that. Flower executes this file at start, before it builds its web app:
importing the collector adds the dance series to Flower's /metrics, and :func:`protect_metrics` puts
/metrics behind Flower's authentication. It reads the broker from CELERY_BROKER_URL, like every other
entry point. Tornado turns this file's globals into Flower options of the same name, so none may be
called like one (``logging``, ``port``, ``auth``…).
"""

from __future__ import annotations

import os

from producer.settings import DEFAULT_BROKER_URL
from worker.telemetry.flower import FLOWER_MAX_TASKS, FLOWER_MAX_WORKERS, protect_metrics, register

# Flower options (a --max_tasks/--max_workers on the command line still wins): Flower's memory is bounded
# by how many jobs and workers it keeps, whatever the fleet's size (harness/bench_flower.py measures it).
max_tasks = FLOWER_MAX_TASKS
max_workers = FLOWER_MAX_WORKERS

register(os.environ.get("CELERY_BROKER_URL", DEFAULT_BROKER_URL), os.environ.get("DANCE_SENTINEL_MASTER") or None)
protect_metrics()

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
from worker.telemetry.flower import protect_metrics, register

register(os.environ.get("CELERY_BROKER_URL", DEFAULT_BROKER_URL), os.environ.get("DANCE_SENTINEL_MASTER") or None)
protect_metrics()

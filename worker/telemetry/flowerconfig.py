"""Flower's config file for this cluster: ``celery -A worker.app flower --conf=<this file>`` (``dance flower``).

Flower executes this file at start; importing the collector here adds the dance series to Flower's
/metrics. It reads the broker from CELERY_BROKER_URL, like every other entry point.
"""

from __future__ import annotations

import os

from producer.settings import DEFAULT_BROKER_URL
from worker.telemetry.flower import register

register(os.environ.get("CELERY_BROKER_URL", DEFAULT_BROKER_URL), os.environ.get("DANCE_SENTINEL_MASTER") or None)

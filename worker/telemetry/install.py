"""Importing this module wires telemetry into the GPU worker app (``include`` or ``-I worker.telemetry.install``).

It connects the task signal handlers of :mod:`worker.telemetry.outcomes` (jobs into the ledger: batches,
webhooks, metrics) and adds the :class:`~worker.telemetry.step.Telemetry` consumer step (metric
snapshots, readiness in Flower). Celery imports ``include`` modules before it builds the worker's
blueprints, so the step is in place when the consumer starts.
"""

from __future__ import annotations

from worker.app import app
from worker.telemetry.outcomes import connect
from worker.telemetry.step import Telemetry

connect()
app.steps["consumer"].add(Telemetry)

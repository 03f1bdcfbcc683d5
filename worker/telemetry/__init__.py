"""Operators' view of GPU workers: job outcomes into the ledger, metric snapshots, readiness, Flower's /metrics.

:mod:`worker.telemetry.install` wires it into the worker app; :mod:`worker.telemetry.flowerconfig` into Flower.
"""

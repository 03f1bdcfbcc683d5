"""Celery configuration that producers and workers must agree on.

Queue and priority list names on Redis derive from ``priority_steps`` and ``sep``, so both sides build
their apps from this one function; the worker adds its own consumption settings on top.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from celery import Celery

from producer.redisurl import sentinel_options

#: The task name producers send; the worker registers the task under it. Never import the task.
TASK_NAME = "dance.generate"
#: The task name of a workflow job (an arbitrary API-format graph). Producers send it to the same queues as
#: dance jobs, by naming the queue on every send (there are no task routes), so any worker of a queue runs both.
WORKFLOW_TASK_NAME = "dance.workflow"
#: Every task name a GPU worker runs; its ledger and metrics signals count exactly these as jobs.
JOB_TASK_NAMES = frozenset({TASK_NAME, WORKFLOW_TASK_NAME})
#: Priority a job gets when the caller gives none (0 runs first, 9 last). Redis treats a missing
#: priority as 0, the highest, so without this every unprioritised job would jump the line.
DEFAULT_PRIORITY = 5
#: One Redis list per priority level; 0..9 matches the range producers may ask for.
PRIORITY_STEPS = list(range(10))
#: Separator between a queue name and its priority level in Redis list names.
PRIORITY_SEPARATOR = ":"


def shared_config(
    broker_url: str, result_backend: str, result_expires_s: int, sentinel_master: str | None = None
) -> dict[str, Any]:
    return {
        "broker_url": broker_url,
        "result_backend": result_backend,
        "broker_transport_options": {
            "priority_steps": PRIORITY_STEPS,
            "sep": PRIORITY_SEPARATOR,
            "queue_order_strategy": "priority",
            **sentinel_options(broker_url, sentinel_master),
        },
        "result_backend_transport_options": {"retry_policy": {"timeout": 5.0},
                                             **sentinel_options(result_backend, sentinel_master)},
        # JSON only: no pickle anywhere, in either direction.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_default_priority": DEFAULT_PRIORITY,
        "task_send_sent_event": True,  # Flower shows queued jobs only when producers announce them
        "task_track_started": True,
        "result_extended": True,
        "result_expires": result_expires_s,
        "broker_connection_retry_on_startup": True,
        "timezone": "UTC",
    }


class LazyConfig(Mapping[str, Any]):
    """A Celery configuration built by ``build`` on first access, not at import: ``celery -A`` imports the
    app module early, and settings are read from the environment once, at the entry point."""

    def __init__(self, build: Callable[[], dict[str, Any]]) -> None:
        self._build = build
        self._data: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._data is None:
            self._data = self._build()
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


def make_app(name: str, config: dict[str, Any]) -> Celery:
    app = Celery(name, set_as_current=False)
    app.conf.update(config)
    return app

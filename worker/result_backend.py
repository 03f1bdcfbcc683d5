"""Celery's Redis result backends, storing the task's arguments with their URLs redacted.

``result_extended`` (producer/celeryconf.py) makes Celery keep the task's name, worker, queue and its real
``args``/``kwargs`` beside each state (STARTED, PROGRESS, the result) for ``result_expires`` (7 days). A
dance job's kwargs hold the media URLs as the producer gave them, and signed URLs carry working tokens in
their query strings. Anyone who can read the result backend (Flower's result view, ``celery result``,
a Redis dump) would read them for a week. The worker needs the real URLs only while the job runs, and
they travel in the message, so what is stored is the redacted copy: scheme, host, port and path, as
the producer's ``kwargsrepr`` shows them.

The worker and hooks apps select these classes through Celery's ``override_backends`` setting, keyed by
URL scheme, so ``CELERY_RESULT_BACKEND`` keeps its usual form.
"""

from __future__ import annotations

import copy
from typing import Any

from celery.backends.redis import RedisBackend, SentinelBackend

from producer.redact import redact_urls_deep


def redacted_request(request: Any) -> Any:
    """A copy of the task's request context with URLs in ``args`` and ``kwargs`` redacted."""
    if request is None:
        return None
    shown = copy.copy(request)
    shown.args = redact_urls_deep(getattr(request, "args", None))
    shown.kwargs = redact_urls_deep(getattr(request, "kwargs", None))
    return shown


class RedactingRedisBackend(RedisBackend):  # type: ignore[misc]
    def store_result(self, task_id: str, result: Any, state: str, traceback: Any = None,
                     request: Any = None, **kwargs: Any) -> Any:
        return super().store_result(task_id, result, state, traceback, redacted_request(request), **kwargs)


class RedactingSentinelBackend(SentinelBackend):  # type: ignore[misc]
    def store_result(self, task_id: str, result: Any, state: str, traceback: Any = None,
                     request: Any = None, **kwargs: Any) -> Any:
        return super().store_result(task_id, result, state, traceback, redacted_request(request), **kwargs)


#: Celery's ``override_backends`` setting: result backend URL scheme to the class that serves it.
OVERRIDE_BACKENDS = {
    "redis": f"{__name__}:RedactingRedisBackend",
    "rediss": f"{__name__}:RedactingRedisBackend",
    "sentinel": f"{__name__}:RedactingSentinelBackend",
}

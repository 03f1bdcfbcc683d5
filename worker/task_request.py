"""The dance task's Celery request: Celery's own, with the task-succeeded event's result redacted.

A result lists presigned output URLs, whose query strings are signed tokens. The result itself belongs to
the producer, in the result backend; the task-succeeded event carries its repr to every event consumer,
Flower among them, where an operator would see (and could share) working credentials for every output.
The event keeps the URLs without their query strings, so Flower still shows where each output lives.
"""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request

from producer.redact import redact_urls_in


class RedactingRequest(Request):  # type: ignore[misc]
    def send_event(self, type: str, **fields: Any) -> None:
        result = fields.get("result")
        if type == "task-succeeded" and isinstance(result, str):
            fields["result"] = redact_urls_in(result)
        super().send_event(type, **fields)

"""The worker's own check of a job id before the id becomes a folder name or a storage key.

Producers check ids (``producer.schema.check_job_id``), but a message may reach the queue without our
producer (any Celery client can ``send_task`` with any ``task_id``), and a redelivered message is trusted
no more than a new one. A newline, a slash or ``..`` in an id would otherwise land in a path.
"""

from __future__ import annotations

from producer.errors import DanceError, error
from producer.schema import check_job_id


def checked_job_id(job_id: str) -> str:
    """``job_id`` when the whole string is a plain id, else the permanent ``request.bad_option``."""
    try:
        return check_job_id(job_id)
    except DanceError as exc:
        # repr() shows the control character that failed it, capped so a huge id cannot flood the logs.
        raise error(exc.code, exc.message, **exc.details, job_id=repr(job_id)[:200]) from None

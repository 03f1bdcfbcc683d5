"""Redis key names that producers and workers share, in one place so they cannot drift apart."""

from __future__ import annotations

#: Every key this project writes starts with this, apart from Celery's and kombu's own.
PREFIX = "dance"
#: How long per-job bookkeeping keys live, in seconds (as long as results do by default: 7 days).
JOB_KEY_TTL_S = 7 * 24 * 3600


def submitted(job_id: str) -> str:
    """Set once (SET NX) when a job id is first submitted: the idempotency guard."""
    return f"{PREFIX}:job:{job_id}:submitted"


def cancelled(job_id: str) -> str:
    """Set by a cancel; a worker that meets the job later drops it even if it missed the revoke."""
    return f"{PREFIX}:job:{job_id}:cancelled"


def attempts(job_id: str) -> str:
    """INCR per start of the job on a worker."""
    return f"{PREFIX}:job:{job_id}:attempts"


def worker_liveness(hostname: str) -> str:
    """A worker's liveness record, refreshed while it runs, expiring when it dies."""
    return f"{PREFIX}:worker:{hostname}"

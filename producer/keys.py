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


def started(job_id: str) -> str:
    """When the run that owns the job started it (epoch seconds), set at every start: the v2 ``started_at``."""
    return f"{PREFIX}:job:{job_id}:started"


def lease(job_id: str) -> str:
    """The execution lease: the token of the one run allowed to use a GPU for this job, with a TTL."""
    return f"{PREFIX}:job:{job_id}:lease"


def job_prompt(job_id: str) -> str:
    """The ComfyUI prompt of the run that holds the job (its ComfyUI's URL, prompt id and lease token), so
    a run that takes over from a dead one can stop the prompt the dead one left running."""
    return f"{PREFIX}:job:{job_id}:prompt"


def executions(job_id: str) -> str:
    """INCR per prompt submitted to ComfyUI for this job: GPU runs, for audits and the chaos run."""
    return f"{PREFIX}:job:{job_id}:executions"


def manifest_writes(job_id: str) -> str:
    """INCR per manifest written for this job: anything above 1 is a duplicate result write."""
    return f"{PREFIX}:job:{job_id}:manifest_writes"


def worker_liveness(hostname: str) -> str:
    """A worker's liveness record, refreshed while it runs, expiring when it dies."""
    return f"{PREFIX}:worker:{hostname}"


def job_ended(job_id: str) -> str:
    """Set once (SET NX) when a job ends (success, failure or cancel): its outcome is counted exactly once."""
    return f"{PREFIX}:job:{job_id}:ended"


def job_fingerprint(job_id: str) -> str:
    """The sha256 of a workflow job's graph and owner, set once (SET NX) by its first submit: a later submit
    under the same id (an Idempotency-Key) is the same job only if it carries the same workflow."""
    return f"{PREFIX}:job:{job_id}:fingerprint"


def job_batch(job_id: str) -> str:
    """The id of the batch a job belongs to (a job belongs to at most one)."""
    return f"{PREFIX}:job:{job_id}:batch"


def job_callback(job_id: str) -> str:
    """The job's callback URL, set by the producer, read when the job ends."""
    return f"{PREFIX}:job:{job_id}:callback"


def batch_meta(batch_id: str) -> str:
    """A hash: total, fingerprint of the job list, callback URL, created and completed times, summary."""
    return f"{PREFIX}:batch:{batch_id}:meta"


def batch_jobs(batch_id: str) -> str:
    """A sorted set of the batch's job ids, scored by their line (row) number."""
    return f"{PREFIX}:batch:{batch_id}:jobs"


def batch_pending(batch_id: str) -> str:
    """Jobs of the batch that have not ended; the job that takes it to 0 completes the batch."""
    return f"{PREFIX}:batch:{batch_id}:pending"


def ended_per_minute(minute: int) -> str:
    """Jobs that ended during one minute (Unix time // 60), for the cluster's job rate."""
    return f"{PREFIX}:stats:ended:{minute}"


def worker_metrics(hostname: str) -> str:
    """A worker's metric snapshot (JSON), refreshed while it runs, expiring when it dies."""
    return f"{PREFIX}:metrics:{hostname}"


def worker_capabilities(hostname: str) -> str:
    """What a ready worker's ComfyUI offers (JSON: node classes, model files per loader), with a TTL."""
    return f"{PREFIX}:capabilities:worker:{hostname}"


def queue_capabilities(queue: str) -> str:
    """A sorted set of the ready workers that consume ``queue``, scored by when each one's record expires
    (Unix seconds): a member whose score has passed is a worker that stopped refreshing it."""
    return f"{PREFIX}:capabilities:queue:{queue}"


def outbox_entry(entry_id: str) -> str:
    """A hash: one follow-up of a job's end (a webhook, a batch completion), its state and attempts."""
    return f"{PREFIX}:outbox:entry:{entry_id}"


#: A sorted set of outbox entry ids still to deliver, scored by when each is next due (Unix seconds).
OUTBOX_DUE = f"{PREFIX}:outbox:due"
#: A sorted set of outbox entry ids given up on, scored by when (Unix seconds); each keeps its hash for a while.
OUTBOX_GIVEN_UP = f"{PREFIX}:outbox:given_up"
#: Pattern of every worker's metric snapshot key.
WORKER_METRICS_PATTERN = f"{PREFIX}:metrics:*"
#: Pattern of every worker's liveness key.
WORKER_LIVENESS_PATTERN = f"{PREFIX}:worker:*"

"""A job as the two HTTP APIs show it, computed from its Celery state (the result backend's meta).

The v2 status of each Celery/dance state:

=====================================  ===========  ============
Celery / dance state                   v2 status    RunPod status
=====================================  ===========  ============
PENDING, RECEIVED, REQUEUED, RETRY     queued       IN_QUEUE
STARTED, PROGRESS                      running      IN_PROGRESS
STARTED/PROGRESS after a cancel        canceling    IN_PROGRESS
REVOKED                                canceled     CANCELLED
FAILURE                                failed       FAILED
SUCCESS                                succeeded    COMPLETED
=====================================  ===========  ============

The same meta arrives two ways: read from the backend (``get_task_meta``) or published by it on every
state write (see gateway/events.py); :func:`snapshot_from_meta` reads either.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.job_index import KIND_WORKFLOW, JobRecord
from producer import keys
from producer.client import DanceClient
from producer.errors import DanceError
from producer.progressbar import describe_progress

V2_BY_STATE = {"PENDING": "queued", "RECEIVED": "queued", "REQUEUED": "queued", "RETRY": "queued",
               "STARTED": "running", "PROGRESS": "running", "REVOKED": "canceled", "FAILURE": "failed",
               "SUCCESS": "succeeded"}
RUNPOD_BY_V2 = {"queued": "IN_QUEUE", "running": "IN_PROGRESS", "canceling": "IN_PROGRESS",
                "canceled": "CANCELLED", "failed": "FAILED", "succeeded": "COMPLETED"}
#: v2 statuses in which a job has ended.
TERMINAL = frozenset({"succeeded", "failed", "canceled", "expired"})
#: Every v2 status a list may be filtered by.
V2_STATUSES = frozenset({"queued", "running", "succeeded", "canceling", "canceled", "failed", "expired"})


@dataclass(frozen=True)
class Snapshot:
    state: str
    #: The meta's ``result``: progress while PROGRESS, the result dict on SUCCESS, the error on FAILURE.
    info: Any
    #: When the job ended, as the backend wrote it (ISO 8601), or None.
    date_done: str | None
    cancel_requested: bool
    #: When the job's latest attempt started (epoch seconds, the worker's ``keys.started``), or None.
    started_at: float | None = None

    @property
    def status(self) -> str:
        status = V2_BY_STATE.get(self.state, "queued")
        return "canceling" if status == "running" and self.cancel_requested else status


def snapshot_from_meta(meta: dict[str, Any], cancel_requested: bool, started_at: float | None = None) -> Snapshot:
    done = meta.get("date_done")
    return Snapshot(str(meta.get("status", "PENDING")), meta.get("result"),
                    done.isoformat() if isinstance(done, datetime) else (str(done) if done else None),
                    cancel_requested, started_at)


def read_snapshot(client: DanceClient, job_id: str) -> Snapshot:
    """The job's state now (blocking: call it from a thread)."""
    meta = client._guard(lambda: client.app.backend.get_task_meta(job_id, cache=False))
    cancelled, started = client._guard(lambda: _job_flags(client, job_id))
    return snapshot_from_meta(meta, bool(cancelled), float(started) if started is not None else None)


def _job_flags(client: DanceClient, job_id: str) -> list[Any]:
    """Whether a cancel was asked, and when the latest attempt started: one round trip."""
    pipe = client.redis.pipeline(transaction=False)
    pipe.exists(keys.cancelled(job_id))
    pipe.get(keys.started(job_id))
    return list(pipe.execute())


def iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat()


def v2_progress(snapshot: Snapshot) -> dict[str, Any] | None:
    """The contract's Progress from the worker's PROGRESS meta (stage, node, value, max, percent).

    ``value`` is weighted by nodes, as the contract has it: the nodes done plus the current node's step
    fraction, over the graph's nodes. A meta without node counts (a stage change) gives the step fraction.
    """
    meta = snapshot.info
    if snapshot.state != "PROGRESS" or not isinstance(meta, dict):
        return None
    step_fraction = min(1.0, max(0.0, float(meta.get("percent") or 0.0) / 100.0))
    done, total = int(meta.get("nodes_done") or 0), int(meta.get("nodes_total") or 0)
    value = min(1.0, (done + step_fraction) / total) if total > 0 else step_fraction
    return {"value": value, "nodes_done": done, "nodes_total": total,
            "current_node": meta.get("node"), "current_node_class": meta.get("class_type"),
            "step": meta.get("value"), "steps": meta.get("max"), "message": describe_progress(meta) or None}


def v2_error(snapshot: Snapshot) -> dict[str, Any] | None:
    if snapshot.status != "failed":
        return None
    exc = snapshot.info
    if isinstance(exc, DanceError):
        return {"code": exc.code, "message": exc.message, "node_id": exc.details.get("node_id"),
                "class_type": exc.details.get("class_type")}
    return {"code": "job.failed", "message": f"{type(exc).__name__}: {exc}"}


def v2_outputs(record: JobRecord, snapshot: Snapshot, base: str) -> list[dict[str, Any]]:
    """Committed outputs: a workflow job's are assets; a dance job's are its stored files."""
    result = snapshot.info if snapshot.state == "SUCCESS" and isinstance(snapshot.info, dict) else {}
    expires = iso(record.created_at + keys.JOB_KEY_TTL_S)
    outputs: list[dict[str, Any]] = []
    for item in result.get("outputs") or []:
        if record.kind == KIND_WORKFLOW:
            outputs.append({"node_id": str(item.get("node_id")), "name": item.get("name"), "type": item.get("type"),
                            "content_type": item.get("content_type"), "size_bytes": item.get("size_bytes"),
                            "id": item.get("asset_id"), "hash": item.get("hash"),
                            "url": f"{base}/api/v2/assets/{item.get('asset_id')}/content",
                            "url_expires_at": expires, "job_id": record.id})
        else:
            outputs.append({"node_id": str(item.get("node_id")), "name": item.get("filename"),
                            "type": item.get("kind") if item.get("kind") in ("image", "video") else "file",
                            "content_type": item.get("content_type"), "size_bytes": item.get("bytes"),
                            "id": f"{record.id}/{item.get('filename')}", "hash": None,
                            "url": item.get("url") or item.get("uri"), "url_expires_at": expires,
                            "job_id": record.id})
    return outputs


def v2_job(record: JobRecord, snapshot: Snapshot, base: str) -> dict[str, Any]:
    """The contract's Job for one record and state; ``base`` is the origin the caller reached us on."""
    status = snapshot.status
    result = snapshot.info if snapshot.state == "SUCCESS" and isinstance(snapshot.info, dict) else {}
    timings = result.get("timings") or {}
    link = f"{base}/api/v2/jobs/{record.id}"
    return {
        "id": record.id, "status": status, "created_at": iso(record.created_at),
        "started_at": _started_at(snapshot), "completed_at": snapshot.date_done if status in TERMINAL else None,
        "expires_at": iso(record.created_at + keys.JOB_KEY_TTL_S),
        "queue_position": None, "progress": v2_progress(snapshot),
        "outputs": v2_outputs(record, snapshot, base), "error": v2_error(snapshot),
        "metrics": {"queue_ms": _ms(timings.get("queued_s")), "execution_ms": _ms(timings.get("execute_s"))},
        "urls": {"self": link, "events": f"{link}/events", "cancel": f"{link}/cancel"},
        "kind": record.kind, "queue": record.queue,
    }


def _started_at(snapshot: Snapshot) -> str | None:
    # A requeued job is queued again: its earlier attempt's start is no start of what the client now sees.
    if snapshot.started_at is None or snapshot.status == "queued":
        return None
    return iso(snapshot.started_at)


def runpod_job(record: JobRecord, snapshot: Snapshot) -> dict[str, Any]:
    """The old endpoint's status body: ``id``, ``status``, the result under ``output``, or ``error``."""
    body: dict[str, Any] = {"id": record.id, "status": RUNPOD_BY_V2[snapshot.status]}
    if snapshot.state == "SUCCESS" and isinstance(snapshot.info, dict):
        timings = snapshot.info.get("timings") or {}
        body.update(output=snapshot.info, delayTime=_ms(timings.get("queued_s")),
                    executionTime=_ms(timings.get("execute_s")))
    elif snapshot.status == "failed":
        exc = snapshot.info
        body["error"] = exc.as_dict() if isinstance(exc, DanceError) else {"code": "job.failed", "message": str(exc)}
    elif snapshot.state == "PROGRESS":
        body["progress"] = snapshot.info
    return body


def _ms(seconds: object) -> int | None:
    return round(float(seconds) * 1000) if isinstance(seconds, int | float) else None

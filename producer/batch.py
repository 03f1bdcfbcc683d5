"""Batches of dance jobs: submitted once (reruns fill in only what is missing), followed from anywhere.

A batch is a list of job ids in Redis (``dance:batch:<id>:jobs``, scored by line) plus a record of its
size, the fingerprint of its job list, its callback URL and, once done, its completion time. Each job id
comes from the batch id and the line (or the row's own ``job_id``); the client's per-job idempotency does
the rest, so rerunning an interrupted batch never runs a job twice. Completion is counted where jobs
end (see :mod:`producer.ledger`) and kept in the outbox until recorded (:mod:`producer.outbox`), so it is
recorded exactly once even when the producer has long exited or a publish was lost.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from producer import keys, ledger, outbox
from producer.batchfile import MAX_BATCH_ID_CHARS, BatchItem, content_batch_id, problem, raise_problems
from producer.errors import BATCH_INVALID, BATCH_MISMATCH, BATCH_UNKNOWN, JOB_WAIT_TIMEOUT, DanceError, error
from producer.localmedia import MEDIA_FIELDS
from producer.schema import (
    JOB_ID_PATTERN,
    check_job_id,
    check_priority,
    check_queue,
    check_timeout_s,
    parse_request,
)
from producer.webhooks import check_callback_url

if TYPE_CHECKING:
    from producer.client import DanceClient

#: Pause between two looks at a batch while waiting for it, in seconds.
BATCH_POLL_INTERVAL_S = 0.5
#: Result-backend keys read per round trip.
MGET_CHUNK = 500
#: Celery states, by what they mean for a batch.
_RUNNING_STATES = frozenset({"STARTED", "PROGRESS", "RETRY"})
#: What a job of a batch can be, in the order summaries list them.
STATUSES = ("succeeded", "failed", "cancelled", "running", "queued", "not_submitted")

#: Called after each job of a batch was handled: (done so far, total, whether it was published now).
SubmitCallback = Callable[[int, int, bool], None]
#: Called with each new summary while waiting.
SummaryCallback = Callable[["BatchSummary"], None]


@dataclass
class BatchSummary:
    batch_id: str
    total: int
    counts: Counter[str] = field(default_factory=Counter)
    failed_by_code: Counter[str] = field(default_factory=Counter)
    completed_at: float | None = None

    @property
    def ended(self) -> int:
        return self.counts["succeeded"] + self.counts["failed"] + self.counts["cancelled"]

    @property
    def settled(self) -> bool:
        """No job is queued or running any more (jobs never submitted cannot end)."""
        return self.counts["queued"] + self.counts["running"] == 0

    def as_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "total": self.total, **{s: self.counts[s] for s in STATUSES},
                "failed_by_code": dict(self.failed_by_code), "completed_at": self.completed_at}


@dataclass(frozen=True)
class SubmitReport:
    published: int
    already_submitted: int


class BatchHandle:
    """One batch: its jobs' states, their results, and waiting for it to settle."""

    def __init__(self, client: DanceClient, batch_id: str, report: SubmitReport | None = None) -> None:
        self.client = client
        self.id = batch_id
        #: What the submit that made this handle did (None for a handle reattached by id).
        self.report = report

    def job_ids(self) -> list[str]:
        ids = self.client._guard(lambda: self.client.redis.zrange(keys.batch_jobs(self.id), 0, -1))
        if not ids and not self.client._guard(lambda: self.client.redis.exists(keys.batch_meta(self.id))):
            raise error(BATCH_UNKNOWN, f"no batch {self.id} was submitted to this broker", batch_id=self.id)
        return [raw.decode() for raw in ids]

    def jobs(self) -> Iterator[dict[str, Any]]:
        """One line per job, in file order: ``{job_id, status, result}`` or ``{job_id, status, error}``."""
        ids = self.job_ids()
        for start in range(0, len(ids), MGET_CHUNK):
            chunk = ids[start:start + MGET_CHUNK]
            yield from (job_view(job_id, meta, submitted) for job_id, meta, submitted in self._read(chunk))

    def summary(self) -> BatchSummary:
        meta = self.client._guard(lambda: self.client.redis.hgetall(keys.batch_meta(self.id)))
        summary = BatchSummary(self.id, total=0)
        for view in self.jobs():
            summary.total += 1
            summary.counts[view["status"]] += 1
            if view["status"] == "failed":
                summary.failed_by_code[str(view["error"].get("code"))] += 1
        completed = meta.get(b"completed_at")
        summary.completed_at = float(completed) if completed else None
        return summary

    def wait(self, timeout_s: float | None = None, on_summary: SummaryCallback | None = None) -> BatchSummary:
        """Wait until no job is queued or running; raises ``job.wait_timeout`` when time runs out."""
        limit = self.client.settings.wait_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        while True:
            summary = self.summary()
            if on_summary is not None:
                on_summary(summary)
            if summary.settled:
                return summary
            if time.monotonic() >= deadline:
                raise error(JOB_WAIT_TIMEOUT, f"batch {self.id} did not settle within {limit:g}s",
                            batch_id=self.id, **{s: summary.counts[s] for s in ("running", "queued")})
            time.sleep(BATCH_POLL_INTERVAL_S)

    def write_results(self, path: Path) -> int:
        """Write one JSON line per job to ``path``; returns how many lines were written."""
        count = 0
        with path.open("w", encoding="utf-8") as out:
            for view in self.jobs():
                out.write(json.dumps(view, ensure_ascii=False) + "\n")
                count += 1
        return count

    def _read(self, job_ids: list[str]) -> list[tuple[str, Any, bool]]:
        backend = self.client.app.backend
        broker = self.client.redis

        def fetch() -> tuple[list[Any], list[Any]]:
            # Results may live in another Redis than the broker (CELERY_RESULT_BACKEND).
            metas = backend.client.mget([backend.get_key_for_task(job_id) for job_id in job_ids])
            markers = broker.mget([keys.submitted(job_id) for job_id in job_ids])
            return metas, markers

        metas, markers = self.client._guard(fetch)
        return [(job_id, json.loads(meta) if meta else None, marker is not None)
                for job_id, meta, marker in zip(job_ids, metas, markers, strict=True)]


def job_view(job_id: str, meta: dict[str, Any] | None, submitted: bool) -> dict[str, Any]:
    """What one job of a batch is, from its result-backend record."""
    state = meta.get("status") if meta else None
    if state == "SUCCESS":
        return {"job_id": job_id, "status": "succeeded", "result": meta["result"] if meta else None}
    if state == "FAILURE":
        return {"job_id": job_id, "status": "failed", "error": stored_error(meta["result"] if meta else None)}
    if state == "REVOKED":
        return {"job_id": job_id, "status": "cancelled", "error": {"code": "job.cancelled",
                                                                    "message": "the job was cancelled"}}
    if state in _RUNNING_STATES:
        return {"job_id": job_id, "status": "running"}
    return {"job_id": job_id, "status": "queued" if submitted or state else "not_submitted"}


def stored_error(stored: Any) -> dict[str, Any]:
    """``{code, message, details}`` of an exception as Celery's JSON backend stores it."""
    if not isinstance(stored, dict):
        return {"code": "unknown", "message": str(stored), "details": {}}
    args = stored.get("exc_message")
    if stored.get("exc_module") == "producer.errors" and isinstance(args, list) and len(args) == 3:
        return {"code": str(args[0]), "message": str(args[1]), "details": args[2] or {}}
    return {"code": str(stored.get("exc_type")), "message": str(args), "details": {}}


def submit_batch(
    client: DanceClient,
    items: Iterable[BatchItem | Mapping[str, Any]],
    *,
    batch_id: str | None = None,
    callback_url: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    timeout_s: float | None = None,
    on_submitted: SubmitCallback | None = None,
) -> BatchHandle:
    """Submit every job of a batch that is not submitted yet; see :meth:`DanceClient.submit_batch`."""
    rows = [item if isinstance(item, BatchItem) else BatchItem.from_row(item, line)
            for line, item in enumerate(items, start=1)]
    batch_id = check_batch_id(batch_id if batch_id is not None else content_batch_id(rows))
    callback = check_callback_url(callback_url) if callback_url is not None else None
    job_ids = validate(rows, batch_id)
    fingerprint = hashlib.sha256("\n".join(job_ids).encode()).hexdigest()
    created = client._guard(lambda: ledger.create_batch(client.redis, batch_id, fingerprint, len(rows), callback))
    if created == "mismatch":
        raise error(BATCH_MISMATCH, f"batch {batch_id} already exists with other jobs", batch_id=batch_id)
    lines = [(job_id, row.line) for job_id, row in zip(job_ids, rows, strict=True)]
    completed, taken = client._guard(lambda: ledger.link_jobs(client.redis, batch_id, lines))
    if taken is not None:
        raise error(BATCH_MISMATCH, f"job {taken} belongs to another batch", batch_id=batch_id, job_id=taken)
    if completed:  # every job of the batch had ended before it was registered: the completion is in the outbox
        ledger.publish(client.app, [outbox.batch_completion(batch_id)])
    published = 0
    for done, (job_id, row) in enumerate(zip(job_ids, rows, strict=True), start=1):
        _, new = client._submit(
            row.request, job_id=job_id, queue=row.queue or queue,
            priority=row.priority if row.priority is not None else priority,
            timeout_s=row.timeout_s if row.timeout_s is not None else timeout_s, callback_url=row.callback_url,
        )
        published += int(new)
        if on_submitted is not None:
            on_submitted(done, len(rows), new)
    return BatchHandle(client, batch_id, SubmitReport(published, len(rows) - published))


def validate(rows: list[BatchItem], batch_id: str) -> list[str]:
    """Every row's job id, once every row has been checked; raises one ``batch.invalid`` for all bad rows."""
    problems: list[dict[str, Any]] = []
    job_ids: list[str] = []
    seen: set[str] = set()
    for row in rows:
        job_id = str(row.job_id) if row.job_id is not None else f"{batch_id}-{row.line}"
        job_ids.append(job_id)
        try:
            check_row(row, job_id)
        except DanceError as exc:
            problems.append(problem(row.line, exc))
            continue
        if job_id in seen:
            problems.append({"line": row.line, "code": BATCH_INVALID, "message": f"job id {job_id} repeats"})
        seen.add(job_id)
    raise_problems(problems)
    return job_ids


def check_row(row: BatchItem, job_id: str) -> None:
    check_job_id(job_id)
    if row.queue is not None:
        check_queue(row.queue)
    if row.priority is not None:
        check_priority(row.priority)
    if row.timeout_s is not None:
        check_timeout_s(row.timeout_s)
    if row.callback_url is not None:
        check_callback_url(row.callback_url)
    parse_request(_local_files_as_uris(row.request))


def _local_files_as_uris(request: dict[str, Any]) -> dict[str, Any]:
    """The request with existing local files written as file:// URIs, to validate it before staging."""
    body = request.get("input") if set(request) == {"input"} else request
    if not isinstance(body, dict):
        return request
    checked = dict(body)
    for name, group in MEDIA_FIELDS.items():
        if name in checked:
            checked[name] = _as_uri(checked[name])
        nested = checked.get(group)
        if isinstance(nested, dict) and name in nested:
            checked[group] = {**nested, name: _as_uri(nested[name])}
    return checked


def _as_uri(value: Any) -> Any:
    if isinstance(value, str) and value.strip() and "://" not in value and Path(value).expanduser().is_file():
        return Path(value).expanduser().resolve().as_uri()
    return value


def check_batch_id(batch_id: str) -> str:
    if not isinstance(batch_id, str) or not JOB_ID_PATTERN.fullmatch(batch_id) or len(batch_id) > MAX_BATCH_ID_CHARS:
        raise error(BATCH_INVALID, f"batch id {batch_id!r} must be 1-{MAX_BATCH_ID_CHARS} characters of letters, "
                    "digits, '.', '_' or '-', starting with a letter or digit", batch_id=str(batch_id))
    return batch_id

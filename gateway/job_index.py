"""Which jobs the gateway submitted, for whom: the list route and the owner check of every job route.

One JSON record per job (``dance:gw:job:<id>``, written with SET NX, so it is also the Idempotency-Key's
claim), one sorted set of job ids per owner (``dance:gw:owner:<name>:jobs``, scored by creation time), and
for a workflow job the graph as submitted (``dance:gw:workflow:<id>``, for GET /api/v2/jobs/{id}/workflow;
kept apart from the record so a list page never reads graphs). All live as long as the job's own
bookkeeping (``keys.JOB_KEY_TTL_S``). A job the index does not hold, or holds for another owner, is
"not found" to the caller: ids of other keys' jobs leak nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis

from producer import keys

#: Kinds of job the gateway submits.
KIND_DANCE, KIND_WORKFLOW = "dance", "workflow"


def record_key(job_id: str) -> str:
    return f"{keys.PREFIX}:gw:job:{job_id}"


def workflow_key(job_id: str) -> str:
    return f"{keys.PREFIX}:gw:workflow:{job_id}"


def owner_key(owner: str) -> str:
    return f"{keys.PREFIX}:gw:owner:{owner}:jobs"


@dataclass(frozen=True)
class JobRecord:
    id: str
    owner: str
    queue: str
    kind: str
    #: Unix time of the submit, in seconds.
    created_at: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> JobRecord:
        data = json.loads(raw)
        return cls(str(data["id"]), str(data["owner"]), str(data["queue"]), str(data["kind"]),
                   float(data["created_at"]))


@dataclass(frozen=True)
class Page:
    records: list[JobRecord]
    #: Score to pass as ``before`` for the next page; None on the last page.
    next_before: float | None


class JobIndex:
    def __init__(self, client: redis.Redis, ttl_s: int = keys.JOB_KEY_TTL_S) -> None:
        self.redis = client
        self.ttl_s = ttl_s

    def claim(self, job_id: str, owner: str, queue: str, kind: str,
              workflow: dict[str, Any] | None = None) -> JobRecord | None:
        """Record a job about to be submitted (and its graph, if given); None when its id is already recorded
        (reused key)."""
        record = JobRecord(job_id, owner, queue, kind, time.time())
        if not self.redis.set(record_key(job_id), record.to_json(), nx=True, ex=self.ttl_s):
            return None
        with self.redis.pipeline() as pipe:
            if workflow is not None:
                pipe.set(workflow_key(job_id), json.dumps(workflow, separators=(",", ":")), ex=self.ttl_s)
            pipe.zadd(owner_key(owner), {job_id: record.created_at})
            pipe.zremrangebyscore(owner_key(owner), "-inf", record.created_at - self.ttl_s)
            pipe.expire(owner_key(owner), self.ttl_s)
            pipe.execute()
        return record

    def release(self, record: JobRecord) -> None:
        """Forget a job whose submit was refused: a rejected request leaves nothing behind."""
        with self.redis.pipeline() as pipe:
            pipe.delete(record_key(record.id), workflow_key(record.id))
            pipe.zrem(owner_key(record.owner), record.id)
            pipe.execute()

    def load(self, job_id: str) -> JobRecord | None:
        raw = self.redis.get(record_key(job_id))
        return JobRecord.from_json(raw) if raw is not None else None

    def workflow(self, job_id: str) -> dict[str, Any] | None:
        """The graph a workflow job was submitted with; None for a dance job (its graph is the worker's)."""
        raw = self.redis.get(workflow_key(job_id))
        return cast(dict[str, Any], json.loads(raw)) if raw is not None else None

    def page(self, owner: str, count: int, before: float | None = None) -> Page:
        """Up to ``count`` of the owner's jobs, newest first, created before ``before``."""
        upper = f"({before!r}" if before is not None else "+inf"
        found = self.redis.zrevrangebyscore(owner_key(owner), upper, "-inf", start=0, num=count, withscores=True)
        entries = cast(list[tuple[bytes, float]], found)
        ids = [job_id.decode() for job_id, _ in entries]
        raws = self.redis.mget([record_key(job_id) for job_id in ids]) if ids else []
        # A record gone (expired) while its id lingers in the set is skipped, not shown as a ghost.
        records = [JobRecord.from_json(raw) for raw in raws if raw is not None]
        next_before = float(entries[-1][1]) if len(entries) == count else None
        return Page(records, next_before)

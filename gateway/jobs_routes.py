"""Comfy API v2 jobs: submit, list, get, cancel (the events stream is gateway/events.py).

``POST /api/v2/jobs`` takes ``{"workflow": <API-format graph>}`` and, as this cluster's extensions,
``queue`` (a queue the key may use; default the key's) and ``deadline_s``. Contract fields the cluster
cannot honour (``extra_data``, ``metadata``, ``priority``, ``webhook_url``, ``inputs``) are refused with a
typed error, never dropped. An ``Idempotency-Key`` maps to the job id (a digest of key name and header),
and is single-use as the contract says: a second request with it answers 422 ``idempotency_key_reuse``.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from aiohttp import web

from gateway.context import base_url, context_of, principal_of
from gateway.job_index import KIND_WORKFLOW
from gateway.jobview import V2_STATUSES, read_snapshot, v2_job
from gateway.limits import read_json_object
from gateway.settings import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT
from producer.errors import (
    GATEWAY_INVALID_BODY,
    GATEWAY_METADATA_UNSUPPORTED,
    GATEWAY_NOT_FOUND,
    GATEWAY_UNSUPPORTED,
    GATEWAY_WORKFLOW_UI,
    WORKFLOW_INVALID,
    error,
)
from producer.graph import check_graph
from producer.schema import check_timeout_s

#: Body fields of the contract this cluster does not honour.
UNSUPPORTED_FIELDS = ("extra_data", "metadata", "priority", "webhook_url", "inputs")
#: Body fields POST /api/v2/jobs reads.
KNOWN_FIELDS = frozenset({"workflow", "queue", "deadline_s"})
#: Longest Idempotency-Key, in characters (the SDK's own cap).
MAX_IDEMPOTENCY_KEY_CHARS = 255
#: Jobs read per index page while a status filter looks for matches.
LIST_SCAN_BATCH = 50
#: Most jobs one list request reads while filtering, so a rare status cannot make one request scan all.
MAX_LIST_SCAN = 500


def job_id_for(owner: str, idempotency_key: str | None) -> str:
    """The job id of a submit: derived from owner and key (same key, same id), else a fresh one."""
    if idempotency_key is None:
        return "wf-" + uuid.uuid4().hex
    if not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS or not idempotency_key.isprintable():
        raise error(GATEWAY_INVALID_BODY, f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_CHARS} printable characters")
    return "wf-" + hashlib.sha256(f"{owner}\n{idempotency_key}".encode()).hexdigest()[:40]


def check_workflow(body: dict[str, Any]) -> dict[str, Any]:
    """The API-format graph of a submit body, or the contract's typed error."""
    if body.get("metadata") is not None:
        # Labels have their own code in the SDK's contract (metadata_not_supported), so a caller can drop
        # them and resubmit instead of reading a generic refusal.
        raise error(GATEWAY_METADATA_UNSUPPORTED, "this cluster keeps no job labels: submit without 'metadata'",
                    fields=["metadata"])
    unsupported = [name for name in UNSUPPORTED_FIELDS if body.get(name) is not None]
    unknown = sorted(set(body) - KNOWN_FIELDS - set(UNSUPPORTED_FIELDS))
    if unsupported or unknown:
        raise error(GATEWAY_UNSUPPORTED, f"this cluster does not honour {', '.join(unsupported + unknown)}",
                    fields=unsupported + unknown)
    workflow = body.get("workflow")
    # The UI export first: the contract has its own code for it (workflow_format_ui).
    if isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list) and "links" in workflow:
        raise error(GATEWAY_WORKFLOW_UI, "this is a UI export; export the workflow in API format")
    return check_links(check_graph(workflow))


def check_links(graph: dict[str, Any]) -> dict[str, Any]:
    """The graph, if every link (``[node_id, output_index]``) names a node of it; else ``workflow.invalid``.

    ComfyUI would refuse a dangling link only when a worker posts the prompt: refused here, the job is never
    queued and fails nowhere later.
    """
    for node_id, node in graph.items():
        for name, value in (node.get("inputs") or {}).items():
            if (isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)
                    and isinstance(value[0], str) and value[0] not in graph):
                raise error(WORKFLOW_INVALID, f"input '{name}' of node {node_id} links to node {value[0]}, "
                            "which the workflow does not have", node_id=str(node_id), input=name, link=value[0])
    return graph


async def submit(request: web.Request) -> web.Response:
    ctx = context_of(request)
    principal = principal_of(request)
    body = await read_json_object(request, ctx.settings.max_body_bytes)
    workflow = check_workflow(body)
    queue = principal.queue(_optional_str(body, "queue"), ctx.client.settings.default_queue)
    deadline_s = check_timeout_s(body["deadline_s"]) if body.get("deadline_s") is not None else None
    job_id = job_id_for(principal.name, request.headers.get("Idempotency-Key"))
    # submit_workflow checks the asset references and the queue's capabilities before anything is queued.
    record = await ctx.submit_claimed(principal, job_id, queue, KIND_WORKFLOW, lambda: ctx.client.submit_workflow(
        workflow, job_id=job_id, queue=queue, owner=principal.name, deadline_s=deadline_s), workflow=workflow)
    snapshot = await ctx.call(lambda: read_snapshot(ctx.client, record.id))
    return web.json_response(v2_job(record, snapshot, base_url(request)), status=201)


async def get_job(request: web.Request) -> web.Response:
    ctx = context_of(request)
    record = await ctx.owned_job(principal_of(request), request.match_info["id"])
    snapshot = await ctx.call(lambda: read_snapshot(ctx.client, record.id))
    return web.json_response(v2_job(record, snapshot, base_url(request)))


async def get_job_workflow(request: web.Request) -> web.Response:
    """The graph a workflow job was submitted with, as the contract's JobWorkflowResponse (format ``api``).

    A dance job keeps none (the worker builds its graph from the bundled template): 404, as the contract
    answers a job whose workflow cannot be recovered.
    """
    ctx = context_of(request)
    record = await ctx.owned_job(principal_of(request), request.match_info["id"])
    workflow = await ctx.call(lambda: ctx.client._guard(lambda: ctx.index.workflow(record.id)))
    if workflow is None:
        raise error(GATEWAY_NOT_FOUND, f"job {record.id} is a {record.kind} job: it has no submitted workflow "
                    "to recover", job_id=record.id, kind=record.kind)
    return web.json_response({"workflow": workflow, "format": "api"})


async def cancel_job(request: web.Request) -> web.Response:
    """Cancel (idempotent): a queued job ends canceled at once, a running one reads canceling until it stops."""
    ctx = context_of(request)
    record = await ctx.owned_job(principal_of(request), request.match_info["id"])
    await ctx.call(lambda: ctx.client.job(record.id).cancel())
    snapshot = await ctx.call(lambda: read_snapshot(ctx.client, record.id))
    return web.json_response(v2_job(record, snapshot, base_url(request)))


async def list_jobs(request: web.Request) -> web.Response:
    """The key's jobs, newest first: ``status`` (comma-separated) filters, ``limit`` caps, ``cursor`` pages."""
    ctx = context_of(request)
    principal = principal_of(request)
    limit, wanted, before = _list_query(request)
    base = base_url(request)

    def read() -> tuple[list[dict[str, Any]], float | None]:
        jobs: list[dict[str, Any]] = []
        scanned, cursor = 0, before
        while len(jobs) < limit and scanned < MAX_LIST_SCAN:
            page = ctx.index.page(principal.name, LIST_SCAN_BATCH if wanted else limit - len(jobs), cursor)
            scanned += len(page.records)
            for record in page.records:
                job = v2_job(record, read_snapshot(ctx.client, record.id), base)
                cursor = record.created_at
                if wanted is None or job["status"] in wanted:
                    jobs.append({**job, "create_time": job["created_at"], "update_time": _updated(job)})
                if len(jobs) == limit:
                    break
            if page.next_before is None and len(jobs) < limit:
                return jobs, None
        return jobs, cursor

    jobs, next_before = await ctx.call(lambda: ctx.client._guard(read))
    body: dict[str, Any] = {"jobs": jobs}
    if next_before is not None:
        body["next_cursor"] = repr(next_before)
    return web.json_response(body)


def _list_query(request: web.Request) -> tuple[int, frozenset[str] | None, float | None]:
    query = request.rel_url.query
    try:
        limit = int(query.get("limit", DEFAULT_LIST_LIMIT))
        before = float(query["cursor"]) if query.get("cursor") else None
    except ValueError:
        raise error(GATEWAY_INVALID_BODY, "'limit' must be an integer and 'cursor' one this API gave") from None
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise error(GATEWAY_INVALID_BODY, f"'limit' must be between 1 and {MAX_LIST_LIMIT}")
    wanted = frozenset(s.strip() for s in query.get("status", "").split(",") if s.strip()) or None
    if wanted is not None and wanted - V2_STATUSES:
        raise error(GATEWAY_INVALID_BODY, f"unknown status filter {', '.join(sorted(wanted - V2_STATUSES))}",
                    allowed=sorted(V2_STATUSES))
    return limit, wanted, before


def _updated(job: dict[str, Any]) -> str:
    return str(job["completed_at"] or job["created_at"])


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise error(GATEWAY_INVALID_BODY, f"'{name}' must be a string")
    return value


def add_jobs_routes(app: web.Application, events_handler: Any) -> None:
    app.add_routes([
        web.post("/api/v2/jobs", submit),
        web.get("/api/v2/jobs", list_jobs),
        web.get("/api/v2/jobs/{id}", get_job),
        web.get("/api/v2/jobs/{id}/workflow", get_job_workflow),
        web.post("/api/v2/jobs/{id}/cancel", cancel_job),
        web.get("/api/v2/jobs/{id}/events", events_handler),
    ])


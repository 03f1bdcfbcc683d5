"""GET /api/jobs and GET /api/jobs/{id}, new in ComfyUI 0.12.3, as 22_api_jobs recorded them.

A job is a prompt seen from the queue (``pending``, ``in_progress``) or from the history (``completed``;
``failed`` for an execution_error; ``cancelled`` for an interrupt). The list answers every job, newest
first, filtered by ``status`` and ``workflow_id`` and paged by ``offset``/``limit``; a single job adds its
outputs, its history status and its workflow once it has finished.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from simulator.prompt_queue import PromptQueue, QueueItem

#: Status values, in the order the 400 message lists them.
STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
SORT_KEYS = ("created_at", "execution_duration")
SORT_ORDERS = ("asc", "desc")


def _timestamp(messages: list[Any], kind: str) -> Any:
    for name, data in messages:
        if name == kind and isinstance(data, dict):
            return data.get("timestamp")
    return None


def _outputs(outputs: dict[str, Any]) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = []
    for node_id, node_output in outputs.items():
        for media_type, items in node_output.items():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item:
                    files.append({**item, "nodeId": node_id, "mediaType": media_type})
    return files


def queued_job(item: QueueItem, status: str) -> dict[str, Any]:
    return {"id": item[1], "status": status, "priority": item[0], "create_time": item[3].get("create_time"),
            "outputs_count": 0}


def finished_job(entry: dict[str, Any], full: bool) -> dict[str, Any]:
    item = entry["prompt"]
    status = entry.get("status") or {}
    messages = status.get("messages") or []
    kinds = [name for name, _data in messages]
    state = "completed" if status.get("status_str") == "success" else (
        "cancelled" if "execution_interrupted" in kinds else "failed")
    job = {"id": item[1], "status": state, "priority": item[0], "create_time": item[3].get("create_time"),
           "execution_start_time": _timestamp(messages, "execution_start"),
           "execution_end_time": messages[-1][1].get("timestamp") if messages else None}
    if state == "failed":
        job["execution_error"] = next((data for name, data in messages if name == "execution_error"), None)
    files = _outputs(entry.get("outputs") or {})
    job["outputs_count"] = len(files)
    if files:
        job["preview_output"] = files[0]
    workflow_id = ((item[3].get("extra_pnginfo") or {}).get("workflow") or {}).get("id")
    if workflow_id is not None:
        job["workflow_id"] = workflow_id
    if full:
        extra = {key: value for key, value in item[3].items()}
        job.update(outputs=entry.get("outputs") or {}, execution_status=status,
                   workflow={"prompt": item[2], "extra_data": extra})
    return job


def all_jobs(queue: PromptQueue) -> list[dict[str, Any]]:
    running, pending = queue.current()
    jobs = [queued_job(item, "pending") for item in pending] + [queued_job(item, "in_progress") for item in running]
    jobs += [finished_job(entry, full=False) for entry in queue.get_history().values()]
    return jobs


class BadQuery(ValueError):
    """A query parameter 0.12.3 answers 400 to; the message is its ``error`` text."""


def _int_param(query: Any, name: str) -> int | None:
    raw = query.get(name)
    try:
        return None if raw is None else int(raw)
    except ValueError:
        raise BadQuery(f"{name} must be an integer") from None


def _parse(query: Any) -> tuple[list[str], int | None, int, str, str]:
    """(statuses, limit, offset, sort_by, sort_order) of a list request, as 0.12.3 validates them."""
    wanted = [part.strip().lower() for part in query.get("status", "").split(",") if part.strip()]
    invalid = [value for value in wanted if value not in STATUSES]
    if invalid:
        raise BadQuery(f"Invalid status value(s): {', '.join(invalid)}. Valid values: {', '.join(STATUSES)}")
    limit = _int_param(query, "limit")
    if limit is not None and limit <= 0:
        raise BadQuery("limit must be a positive integer")
    offset = max(0, _int_param(query, "offset") or 0)
    sort_by, order = query.get("sort_by", "created_at").lower(), query.get("sort_order", "desc").lower()
    if sort_by not in SORT_KEYS:
        raise BadQuery("sort_by must be 'created_at' or 'execution_duration'")
    if order not in SORT_ORDERS:
        raise BadQuery("sort_order must be 'asc' or 'desc'")
    return wanted, limit, offset, sort_by, order


class JobRoutes:
    def __init__(self, queue: PromptQueue) -> None:
        self.queue = queue

    async def get_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        running, pending = self.queue.current()
        for items, status in ((running, "in_progress"), (pending, "pending")):
            for item in items:
                if item[1] == job_id:
                    return web.json_response(queued_job(item, status))
        entry = self.queue.get_history(prompt_id=job_id).get(job_id)
        if entry is None:
            return web.json_response({"error": "Job not found"}, status=404)
        return web.json_response(finished_job(entry, full=True))

    async def list_jobs(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        try:
            wanted, limit, offset, sort_by, order = _parse(query)
        except BadQuery as bad:
            return web.json_response({"error": str(bad)}, status=400)
        jobs = [job for job in all_jobs(self.queue) if not wanted or job["status"] in wanted]
        if "workflow_id" in query:
            jobs = [job for job in jobs if job.get("workflow_id") == query["workflow_id"]]
        jobs.sort(key=lambda job: _sort_value(job, sort_by), reverse=order == "desc")
        page = jobs[offset:] if limit is None else jobs[offset:offset + limit]
        pagination = {"offset": offset, "limit": limit, "total": len(jobs), "has_more": offset + len(page) < len(jobs)}
        return web.json_response({"jobs": page, "pagination": pagination})


def _sort_value(job: dict[str, Any], sort_by: str) -> float:
    if sort_by == "execution_duration":
        start, end = job.get("execution_start_time"), job.get("execution_end_time")
        return float(end - start) if start is not None and end is not None else 0.0
    return float(job.get("create_time") or 0)

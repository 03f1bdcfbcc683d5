"""The OpenAPI 3.1 document the gateway serves at GET /api/v2/openapi.json, covering every route.

Schemas name the fields this gateway writes; the Comfy API v2 models (comfy-sdk's generated models) are
the reference for the v2 shapes.
"""

from __future__ import annotations

from typing import Any

from gateway.jobview import RUNPOD_BY_V2, V2_STATUSES

_ERROR = {"description": "Error envelope", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}}


def _op(summary: str, ok: str, schema: str | None = None, *, public: bool = False, errors: tuple[int, ...] = (),
        body: str | None = None, params: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}} if schema else None
    operation: dict[str, Any] = {"summary": summary, "responses": {ok: {"description": summary, **(
        {"content": content} if content else {})}}}
    for status in (*errors, *(() if public else (401,))):
        operation["responses"][str(status)] = _ERROR
    if public:
        operation["security"] = []
    if body:
        operation["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{body}"}}}}
    if params:
        operation["parameters"] = list(params)
    return operation


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, kind: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind}, "description": description}


def _paths() -> dict[str, Any]:
    job_id, endpoint, asset_id = _path("id"), _path("endpoint"), _path("id")
    idem = {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "Single-use; maps to the job id. A reuse answers 422 idempotency_key_reuse."}
    return {
        "/api/v2/health": {"get": _op("Gateway and broker health", "200", "Health", public=True, errors=(503,))},
        "/api/v2/openapi.json": {"get": _op("This document", "200", public=True)},
        "/api/v2/jobs": {
            "post": _op("Submit an API-format workflow", "201", "Job", body="JobRequest", params=(idem,),
                        errors=(400, 403, 413, 422, 429, 503)),
            "get": _op("List this key's jobs, newest first", "200", "JobList", errors=(400,), params=(
                _query("status", "string", "comma-separated v2 statuses"), _query("limit", "integer", "1-100"),
                _query("cursor", "string", "next_cursor of the previous page"))),
        },
        "/api/v2/jobs/{id}": {"get": _op("One job (the pollable source of truth)", "200", "Job", errors=(404,),
                                         params=(job_id,))},
        "/api/v2/jobs/{id}/workflow": {"get": _op("The workflow a job was submitted with (format api)", "200",
                                                  "JobWorkflow", errors=(404,), params=(job_id,))},
        "/api/v2/jobs/{id}/cancel": {"post": _op("Cancel a job (idempotent)", "200", "Job", errors=(404,),
                                                 params=(job_id,))},
        "/api/v2/jobs/{id}/events": {"get": {**_op("Server-Sent Events: status, progress, output, error", "200",
                                                   errors=(404,), params=(job_id,))}},
        "/api/v2/assets": {"post": _op("Upload an asset (multipart, blake3, deduplicated)", "201", "Asset",
                                       errors=(400, 413, 422))},
        "/api/v2/assets/from-hash": {"post": _op("Mint an asset from a stored blob's hash", "201", "Asset",
                                                 errors=(404, 422))},
        "/api/v2/assets/by-hash/{hash}": {"head": _op("Whether a blob with this hash is stored", "200",
                                                      errors=(404,), params=(_path("hash"),))},
        "/api/v2/assets/{id}": {
            "get": _op("One asset", "200", "Asset", errors=(404,), params=(asset_id,)),
            "delete": _op("Delete an asset (its blob too once no other asset names it)", "204", errors=(404,),
                          params=(asset_id,)),
        },
        "/api/v2/assets/{id}/content": {"get": _op("An asset's bytes (Range; S3: a presigned redirect)", "200",
                                                   errors=(404, 416), params=(asset_id,))},
        "/v2/{endpoint}/run": {"post": _op("Queue a dance job (old endpoint)", "200", "RunPodJob",
                                           body="RunPodRequest", errors=(400, 403, 413, 422, 429),
                                           params=(endpoint,))},
        "/v2/{endpoint}/runsync": {"post": _op("Queue a dance job and wait (bounded)", "200", "RunPodJob",
                                               body="RunPodRequest", errors=(400, 403, 413, 422, 429),
                                               params=(endpoint,))},
        "/v2/{endpoint}/status/{id}": {"get": _op("A dance job's state", "200", "RunPodJob", errors=(404,),
                                                  params=(endpoint, job_id))},
        "/v2/{endpoint}/cancel/{id}": {"post": _op("Cancel a dance job", "200", "RunPodJob", errors=(404,),
                                                   params=(endpoint, job_id))},
        "/v2/{endpoint}/health": {"get": _op("The endpoint queue's depth and workers", "200", public=True,
                                             params=(endpoint,))},
    }


def _schemas() -> dict[str, Any]:
    obj, text = {"type": "object"}, {"type": "string"}
    return {
        "ErrorEnvelope": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": text, "message": text, "details": obj}}}},
        "Health": {"type": "object", "properties": {"status": text, "auth": {"type": "boolean"}}},
        "JobRequest": {"type": "object", "required": ["workflow"], "properties": {
            "workflow": obj, "queue": text, "deadline_s": {"type": "number"}}},
        "Job": {"type": "object", "required": ["id", "status", "created_at", "outputs", "urls"], "properties": {
            "id": text, "status": {"enum": sorted(V2_STATUSES)}, "created_at": text, "started_at": text,
            "completed_at": text, "expires_at": text, "queue_position": {"type": "integer"}, "progress": obj,
            "outputs": {"type": "array", "items": obj}, "error": obj, "metrics": obj, "urls": obj,
            "kind": {"enum": ["dance", "workflow"]}, "queue": text}},
        "JobWorkflow": {"type": "object", "required": ["workflow", "format"], "properties": {
            "workflow": obj, "format": {"enum": ["api"]}}},
        "JobList": {"type": "object", "properties": {"jobs": {"type": "array", "items": {
            "$ref": "#/components/schemas/Job"}}, "next_cursor": text}},
        "Asset": {"type": "object", "properties": {"id": text, "hash": text, "size_bytes": {"type": "integer"},
                                                   "content_type": text, "url": text}},
        "RunPodRequest": {"type": "object", "required": ["input"], "properties": {"input": obj}},
        "RunPodJob": {"type": "object", "required": ["id", "status"], "properties": {
            "id": text, "status": {"enum": sorted(set(RUNPOD_BY_V2.values()))}, "output": obj, "error": obj,
            "delayTime": {"type": "integer"}, "executionTime": {"type": "integer"}}},
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "XiCON Dance Cluster gateway", "version": "1",
                 "description": "Comfy API v2 jobs and assets, and the old endpoint's RunPod-shaped routes."},
        "paths": _paths(),
        "components": {"schemas": _schemas(), "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }

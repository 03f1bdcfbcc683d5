"""The v2 error envelope ``{"error": {"code", "message", "details"}}`` and the HTTP status of each error.

Every error the gateway answers is a :class:`producer.errors.DanceError`; its project code (``dance_code`` in
``details``) maps to the contract's v2 code and HTTP status here, in one table. A code without its own row
answers by branch: permanent → 422 ``invalid_request`` (500 ``internal_error`` for a fault of the cluster's own
storage, settings or broker), retryable → 503 ``service_unavailable``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from producer import errors as e

log = logging.getLogger(__name__)

#: Project code → (HTTP status, v2 code).
V2_CODES: dict[str, tuple[int, str]] = {
    e.GATEWAY_UNAUTHORIZED: (401, "unauthorized"),
    e.GATEWAY_FORBIDDEN: (403, "forbidden"),
    e.GATEWAY_NOT_FOUND: (404, "not_found"),
    e.JOB_UNKNOWN: (404, "not_found"),
    e.GATEWAY_BODY_TOO_LARGE: (413, "payload_too_large"),
    e.GATEWAY_INVALID_BODY: (400, "invalid_request"),
    e.GATEWAY_UNSUPPORTED: (422, "invalid_request"),
    e.GATEWAY_IDEMPOTENCY_REUSE: (422, "idempotency_key_reuse"),
    e.GATEWAY_QUEUE_FULL: (429, "queue_full"),
    e.GATEWAY_WORKFLOW_UI: (422, "workflow_format_ui"),
    e.WORKFLOW_TEMPLATE: (422, "invalid_workflow"),
    e.WORKFLOW_UNKNOWN_NODES: (422, "invalid_workflow"),
    e.WORKFLOW_MISSING_MODELS: (422, "invalid_workflow"),
    e.BROKER_UNREACHABLE: (503, "service_unavailable"),
    e.ASSET_MISSING: (422, "missing_asset"),
    e.ASSET_NOT_FOUND: (404, "not_found"),
    e.ASSET_BLOB_NOT_FOUND: (404, "blob_not_found"),
    e.ASSET_HASH_MISMATCH: (409, "hash_mismatch"),
    e.ASSET_TOO_LARGE: (413, "payload_too_large"),
    e.ASSET_BAD_RANGE: (416, "range_not_satisfiable"),
    e.ASSET_BAD_UPLOAD: (422, "invalid_request"),
    e.ASSET_BAD_HASH: (422, "invalid_request"),
    e.ASSET_IDEMPOTENCY_REUSE: (422, "idempotency_key_reuse"),
    e.STORAGE_UNAVAILABLE: (503, "service_unavailable"),
    e.WORKFLOW_INVALID: (422, "invalid_workflow"),
    # The contract's typed error for a graph no worker can run, with the missing nodes/models in details.
    e.CAPABILITY_MISSING: (422, "invalid_workflow"),
    e.JOB_ID_REUSED: (422, "idempotency_key_reuse"),
    # The code the SDK documents for a surface that keeps no labels (comfy_sdk Comfy.submit).
    e.GATEWAY_METADATA_UNSUPPORTED: (422, "metadata_not_supported"),
}


#: Areas of codes that name a fault of the cluster itself, never of the request.
CLUSTER_FAULT_AREAS = frozenset({"storage", "config", "broker"})


def status_and_code(exc: e.DanceError) -> tuple[int, str]:
    found = V2_CODES.get(exc.code)
    if found is not None:
        return found
    if exc.code.startswith("workflow."):
        return 422, "invalid_workflow"
    if exc.code.split(".", 1)[0] in CLUSTER_FAULT_AREAS and not exc.retryable:
        return 500, "internal_error"  # the cluster is misconfigured (a missing bucket): not the caller's fault
    return (503, "service_unavailable") if exc.retryable else (422, "invalid_request")


def error_body(exc: e.DanceError) -> dict[str, Any]:
    _, code = status_and_code(exc)
    return {"error": {"code": code, "message": exc.message, "details": {"dance_code": exc.code, **exc.details}}}


def error_response(exc: e.DanceError, retry_after_s: int | None = None) -> web.Response:
    status, _ = status_and_code(exc)
    response = web.json_response(error_body(exc), status=status)
    if status in (429, 503) and retry_after_s is not None:
        response.headers["Retry-After"] = str(retry_after_s)
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_error_middleware(retry_after_s: int) -> Any:
    """Turn every DanceError, and aiohttp's own HTTP errors (404 route, 405, 413), into the envelope."""

    @web.middleware
    async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except e.DanceError as exc:
            log.info("%s %s -> %s", request.method, request.path, exc.code)
            return error_response(exc, retry_after_s)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _http_error(exc)
        except Exception:
            # A bug, not a client's fault: logged with its traceback (which holds no header), answered in
            # the envelope so clients still read a code.
            log.exception("%s %s failed", request.method, request.path)
            return web.json_response({"error": {"code": "internal_error", "message": "the gateway failed",
                                                "details": None}}, status=500)

    return errors_middleware


def _http_error(exc: web.HTTPException) -> web.Response:
    if exc.status == 413:
        dance = e.error(e.GATEWAY_BODY_TOO_LARGE, "the request body is larger than this gateway accepts")
    elif exc.status == 404:
        dance = e.error(e.GATEWAY_NOT_FOUND, "no such route")
    else:
        dance = e.error(e.GATEWAY_INVALID_BODY, exc.reason, http_status=exc.status)
    status, code = status_and_code(dance)
    body = {"error": {"code": code, "message": dance.message, "details": {"dance_code": dance.code, **dance.details}}}
    response = web.json_response(body, status=exc.status if exc.status != 413 else status)
    if exc.status == 405:
        response.headers["Allow"] = exc.headers.get("Allow", "")
    return response

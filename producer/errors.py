"""The one error tree of the project, shared by producers and workers.

Every error a user can meet carries a stable ``code`` (``area.reason``), a human message and a JSON
``details`` dict. The tree has two branches and retry policy follows the branch, never a list of codes:

* :class:`RetryableError`: the world may heal (ComfyUI restarting, a 503 from a media host, a storage
  hiccup). Fetchers retry these with backoff; the task hands the job back to the queue.
* :class:`PermanentError`: retrying cannot help (invalid input, a workflow ComfyUI rejects). The job
  fails at once with the code.

Errors travel through Celery's JSON result backend as ``exc_type``/``exc_module``/``exc_message`` where
``exc_message`` is ``args``. Every class here is therefore rebuilt from ``(code, message, details)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class DanceError(Exception):
    """Root of every error this project raises on purpose."""

    retryable = False

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(code, message, dict(details or {}))
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def as_dict(self) -> dict[str, Any]:
        """The ``{code, message, details}`` shape that failed jobs carry."""
        return {"code": self.code, "message": self.message, "details": self.details}


class RetryableError(DanceError):
    """A transient failure: the same work may succeed later."""

    retryable = True


class PermanentError(DanceError):
    """A failure that repeating the same work cannot fix."""


# Permanent branch ---------------------------------------------------------------------------------------
class InvalidRequest(PermanentError):
    """The job request itself is wrong (types, ranges, unknown fields)."""


class InputRejected(PermanentError):
    """A media input exists but may not or cannot be used."""


class WorkflowInvalid(PermanentError):
    """The workflow template is malformed or needs what this ComfyUI lacks."""


class ComfyRejected(PermanentError):
    """ComfyUI refused or failed our prompt for reasons inherent to the prompt."""


class JobEnded(PermanentError):
    """The job was stopped on purpose: deadline or cancel."""


class ConfigInvalid(PermanentError):
    """An environment variable or option holds a value that cannot work."""


class StorageRejected(PermanentError):
    """Storage refused the operation (credentials, missing bucket)."""


class ModelRejected(PermanentError):
    """A model file is wrong (checksum or size differ from the list) or its URL answers a client error."""


class WebhookRejected(PermanentError):
    """A callback endpoint may not be called (SSRF guard) or refused the delivery with a client error."""


# Retryable branch ---------------------------------------------------------------------------------------
class ComfyUnavailable(RetryableError):
    """ComfyUI cannot be reached or dropped the connection."""


class InputUnavailable(RetryableError):
    """A media host failed in a way that may heal (5xx, timeout, refused)."""


class StorageUnavailable(RetryableError):
    """Object storage failed in a way that may heal."""


class BrokerUnavailable(RetryableError):
    """The Celery broker (Redis) cannot be reached."""


class ModelUnavailable(RetryableError):
    """A model host failed in a way that may heal (5xx, timeout, dropped connection), or the folder is busy."""


class WebhookUnavailable(RetryableError):
    """A callback endpoint failed in a way that may heal (5xx, timeout, refused); the delivery is retried."""


@dataclass(frozen=True)
class CodeInfo:
    branch: type[DanceError]
    meaning: str


#: Every stable code, the class that carries it and its one-line meaning. The README table is checked
#: against this catalogue by the tests.
CATALOG: dict[str, CodeInfo] = {}


def _code(code: str, branch: type[DanceError], meaning: str) -> str:
    CATALOG[code] = CodeInfo(branch, meaning)
    return code


REQUEST_NOT_OBJECT = _code("request.not_object", InvalidRequest, "the request is not a JSON object")
REQUEST_MISSING_FIELD = _code("request.missing_field", InvalidRequest, "a required field is absent")
REQUEST_WRONG_TYPE = _code("request.wrong_type", InvalidRequest, "a field has the wrong JSON type")
REQUEST_OUT_OF_RANGE = _code("request.out_of_range", InvalidRequest, "a number is outside its allowed range")
REQUEST_UNKNOWN_FIELD = _code("request.unknown_field", InvalidRequest, "the request has a field we do not know")
REQUEST_TEXT_TOO_LONG = _code("request.text_too_long", InvalidRequest, "a prompt exceeds its length cap")
REQUEST_BAD_MEDIA_REF = _code(
    "request.bad_media_reference", InvalidRequest, "a media field is not a usable URL, URI or file"
)
REQUEST_DUPLICATE_FIELD = _code(
    "request.duplicate_field", InvalidRequest, "a field is given both nested and flat"
)
REQUEST_BAD_OPTION = _code(
    "request.bad_option", InvalidRequest, "a control option (job_id, queue, priority, timeout) is invalid"
)

INPUT_NOT_FOUND = _code("input.not_found", InputRejected, "the media URL or object does not exist (404/410)")
INPUT_HTTP_ERROR = _code("input.http_error", InputRejected, "the media host answered with a client error")
INPUT_TOO_LARGE = _code("input.too_large", InputRejected, "the media is larger than the download cap")
INPUT_NOT_MEDIA = _code("input.not_media", InputRejected, "the bytes are not an image or video we accept")
INPUT_WRONG_KIND = _code(
    "input.wrong_kind", InputRejected, "an image was given where a video is expected, or the reverse"
)
INPUT_CORRUPT = _code("input.corrupt", InputRejected, "the media is truncated or cannot be decoded")
INPUT_SCHEME = _code("input.scheme_unsupported", InputRejected, "the URL scheme is not http, https or s3")
INPUT_BLOCKED = _code("input.address_blocked", InputRejected, "the URL leads to a private or internal address")
INPUT_INSECURE_REDIRECT = _code(
    "input.insecure_redirect", InputRejected, "an https media URL redirects to plain http"
)
INPUT_REDIRECTS = _code("input.too_many_redirects", InputRejected, "the URL redirects too often or in a loop")
INPUT_FORBIDDEN = _code("input.forbidden", InputRejected, "the media host or bucket denied access (401/403)")
INPUT_SERVER_ERROR = _code("input.server_error", InputUnavailable, "the media host failed (5xx) after retries")
INPUT_TIMEOUT = _code("input.timeout", InputUnavailable, "the download timed out after retries")
INPUT_UNREACHABLE = _code("input.unreachable", InputUnavailable, "the media host refused or dropped the connection")

WORKFLOW_TEMPLATE = _code(
    "workflow.template_invalid", WorkflowInvalid, "the workflow file is not an API-format graph"
)
WORKFLOW_PLACEHOLDER = _code(
    "workflow.unknown_placeholder", WorkflowInvalid, "the template names a {{placeholder}} we cannot fill"
)
WORKFLOW_UNKNOWN_NODES = _code(
    "workflow.unknown_nodes", WorkflowInvalid, "ComfyUI lacks node classes the workflow uses"
)
WORKFLOW_MISSING_MODELS = _code(
    "workflow.missing_models", WorkflowInvalid, "ComfyUI's loaders do not offer model files the workflow names"
)

COMFY_PROMPT_REJECTED = _code("comfyui.prompt_rejected", ComfyRejected, "POST /prompt answered 400")
COMFY_NODE_ERRORS = _code(
    "comfyui.node_errors", ComfyRejected, "POST /prompt answered 200 but rejected part of the graph"
)
COMFY_EXECUTION_ERROR = _code("comfyui.execution_error", ComfyRejected, "a node raised while the prompt ran")
COMFY_INTERRUPTED = _code(
    # Retryable: our own prompt was stopped by someone else (an operator, or a cancel of the job before
    # ours whose prompt ended just as the interrupt was sent); running it again is the right outcome.
    "comfyui.interrupted", RetryableError, "something other than this job interrupted its prompt"
)
COMFY_NO_OUTPUTS = _code("comfyui.no_outputs", ComfyRejected, "the prompt finished without any saved output")
COMFY_NO_GPU = _code("comfyui.no_gpu", ConfigInvalid, "COMFYUI_REQUIRE_GPU is on but ComfyUI lists no CUDA device")
COMFY_UNREACHABLE = _code("comfyui.unreachable", ComfyUnavailable, "ComfyUI refused the connection or vanished")
COMFY_PROTOCOL = _code("comfyui.protocol_error", ComfyUnavailable, "ComfyUI answered something we cannot read")
COMFY_TIMEOUT = _code(
    # Apart from comfyui.unreachable: a ComfyUI too slow to answer in COMFYUI_HTTP_TIMEOUT_S may still be
    # running the job's prompt, so the worker stops that prompt before the job is handed back.
    "comfyui.timeout", ComfyUnavailable, "ComfyUI accepted the connection but did not answer in time"
)
COMFY_PROMPT_LOST = _code(
    # Retryable, not ComfyUnavailable: ComfyUI itself is fine (someone cleared its queue), so the worker
    # stays attached and the job simply runs again.
    "comfyui.prompt_lost", RetryableError, "the job's prompt left ComfyUI's queue without running (queue cleared)"
)
COMFY_QUEUE_WAIT = _code(
    "comfyui.queue_wait_exceeded", RetryableError,
    "the job's prompt waited in ComfyUI's queue longer than COMFYUI_QUEUE_WAIT_S without starting",
)

JOB_DEADLINE = _code("job.deadline_exceeded", JobEnded, "the job ran past its execution deadline")
JOB_CANCELLED = _code("job.cancelled", JobEnded, "the job was cancelled")
JOB_BUSY_ELSEWHERE = _code(
    "job.busy_elsewhere", RetryableError, "another worker still holds this job's execution lease"
)
JOB_DUPLICATE_DELIVERY = _code(
    "job.duplicate_delivery", RetryableError,
    "a redelivered copy of a job that a live run holds; the copy was dropped and the job runs once",
)
JOB_ALREADY_ENDED = _code(
    "job.already_ended", JobEnded, "a redelivered copy of a job that had already ended; the copy was dropped"
)
JOB_FENCED = _code(
    "job.fenced", RetryableError, "another run took this run's execution lease; this run stopped and wrote nothing"
)
JOB_WORKER_STOPPED = _code(
    "job.worker_stopped", RetryableError, "the worker was stopped mid-job; the job went back to the queue"
)
JOB_UNKNOWN = _code(
    "job.unknown", InvalidRequest, "no job with this id was ever submitted (or its result expired)"
)
JOB_WAIT_TIMEOUT = _code(
    "job.wait_timeout", RetryableError, "the job did not finish while the caller waited; it may still run"
)
JOB_MALFORMED_RESULT = _code(
    "job.malformed_result", PermanentError, "the result backend holds something we cannot read"
)

STORAGE_FORBIDDEN = _code("storage.forbidden", StorageRejected, "storage denied access or the bucket is missing")
STORAGE_UNAVAILABLE = _code("storage.unavailable", StorageUnavailable, "storage failed in a way that may heal")
STORAGE_NOT_FOUND = _code("storage.not_found", StorageRejected, "the stored object to read does not exist")
STORAGE_TOO_LARGE = _code("storage.too_large", StorageRejected, "the stored object exceeds the read cap")

MODELS_LIST_INVALID = _code(
    "models.list_invalid", ConfigInvalid, "the model list is unreadable or an entry is malformed"
)
MODELS_HTTP_ERROR = _code("models.http_error", ModelRejected, "a model URL answered a client error (4xx)")
MODELS_CHECKSUM = _code("models.checksum_mismatch", ModelRejected, "a model file's sha256 differs from the list")
MODELS_SIZE = _code("models.size_mismatch", ModelRejected, "a model file's size differs from the list")
MODELS_UNAVAILABLE = _code(
    "models.unavailable", ModelUnavailable, "a model host failed (5xx, timeout, reset) after retries"
)
MODELS_BUSY = _code("models.busy", ModelUnavailable, "another `dance models` is writing to the models folder")

BATCH_INVALID = _code(
    "batch.invalid", InvalidRequest, "a batch file cannot be read or some of its rows are not valid requests"
)
BATCH_MISMATCH = _code(
    "batch.mismatch", InvalidRequest, "a batch with this id already holds other jobs, or a job is in another batch"
)
BATCH_UNKNOWN = _code("batch.unknown", InvalidRequest, "no batch with this id was submitted (or it expired)")

WEBHOOK_BLOCKED = _code(
    "webhook.address_blocked", WebhookRejected, "the callback URL leads to a private or internal address"
)
WEBHOOK_HTTP_ERROR = _code(
    "webhook.http_error", WebhookRejected, "the callback endpoint refused the delivery with a client error (4xx)"
)
WEBHOOK_SERVER_ERROR = _code(
    "webhook.server_error", WebhookUnavailable, "the callback endpoint failed (5xx) on every attempt"
)
WEBHOOK_TIMEOUT = _code("webhook.timeout", WebhookUnavailable, "the callback endpoint did not answer in time")
WEBHOOK_UNREACHABLE = _code(
    "webhook.unreachable", WebhookUnavailable, "the callback endpoint refused or dropped the connection"
)

CONFIG_INVALID = _code("config.invalid", ConfigInvalid, "a setting holds a value that cannot work")
FLOWER_AUTH_REQUIRED = _code(
    "flower.auth_required", ConfigInvalid, "Flower would listen beyond loopback without authentication"
)
BROKER_UNREACHABLE = _code("broker.unreachable", BrokerUnavailable, "the broker (Redis) cannot be reached")
# Cold start
WORKER_WARMUP_FAILED = _code(
    "worker.warmup_failed", WorkflowInvalid, "the worker's warm-up run of the workflow failed; it took no job"
)

# Gateway ------------------------------------------------------------------------------------------------
class GatewayRejected(PermanentError):
    """The HTTP gateway refused a request: credentials, scope, size or shape."""


class GatewayBusy(RetryableError):
    """The HTTP gateway holds a request back for now (a full queue); the same request may pass later."""


GATEWAY_UNAUTHORIZED = _code(
    "gateway.unauthorized", GatewayRejected, "no API key, or one the gateway does not know (HTTP 401)"
)
GATEWAY_FORBIDDEN = _code("gateway.forbidden", GatewayRejected, "the API key may not use this queue (HTTP 403)")
GATEWAY_NOT_FOUND = _code(
    "gateway.not_found", GatewayRejected, "no such job or route for this API key (HTTP 404)"
)
GATEWAY_BODY_TOO_LARGE = _code(
    "gateway.body_too_large", GatewayRejected, "the request body exceeds DANCE_GATEWAY_MAX_BODY_BYTES (HTTP 413)"
)
GATEWAY_INVALID_BODY = _code(
    "gateway.invalid_body", GatewayRejected, "the body is not the JSON object or query the route takes (HTTP 400)"
)
GATEWAY_UNSUPPORTED = _code(
    "gateway.unsupported_field", GatewayRejected,
    "the body sets a contract field this cluster cannot honour (HTTP 422)",
)
GATEWAY_IDEMPOTENCY_REUSE = _code(
    "gateway.idempotency_key_reuse", GatewayRejected,
    "this Idempotency-Key was used before; keys are single-use (HTTP 422)",
)
GATEWAY_WORKFLOW_UI = _code(
    "gateway.workflow_format_ui", GatewayRejected, "the workflow is a UI export, not the API format (HTTP 422)"
)
GATEWAY_QUEUE_FULL = _code(
    "gateway.queue_full", GatewayBusy,
    "the queue holds DANCE_GATEWAY_MAX_QUEUE_DEPTH jobs; retry after Retry-After (HTTP 429)",
)
GATEWAY_BIND_REFUSED = _code(
    "gateway.bind_refused", ConfigInvalid, "the gateway would listen beyond loopback without API keys"
)

# Assets
ASSET_MISSING = _code(
    "asset.missing", InvalidRequest, "a core/ASSET reference is malformed or names no asset the caller may use"
)
ASSET_NOT_FOUND = _code("asset.not_found", InvalidRequest, "no asset with this id exists for the caller")
ASSET_BLOB_NOT_FOUND = _code(
    "asset.blob_not_found", InvalidRequest, "no stored blob has this hash (among the caller's uploads)"
)
ASSET_HASH_MISMATCH = _code(
    "asset.hash_mismatch", InvalidRequest, "the uploaded bytes' blake3 differs from the hash the client declared"
)
ASSET_BAD_HASH = _code("asset.bad_hash", InvalidRequest, "a hash is not blake3:<64 lowercase hex digits>")
ASSET_TOO_LARGE = _code("asset.too_large", InvalidRequest, "the upload is larger than the asset size cap")
ASSET_BAD_UPLOAD = _code(
    "asset.bad_upload", InvalidRequest, "the upload is not multipart/form-data with one file part"
)
ASSET_BAD_RANGE = _code("asset.bad_range", InvalidRequest, "the Range header names no bytes of the asset")
ASSET_IDEMPOTENCY_REUSE = _code(
    "asset.idempotency_key_reuse", InvalidRequest, "an upload's Idempotency-Key was used before for other bytes"
)

# Workflow jobs
WORKFLOW_INVALID = _code(
    "workflow.invalid", InvalidRequest, "the submitted workflow is not an API-format graph of nodes"
)
JOB_ID_REUSED = _code(
    "job.id_reused", InvalidRequest, "a workflow job id (idempotency key) was submitted before with another workflow"
)
CAPABILITY_MISSING = _code(
    "capability.missing", WorkflowInvalid,
    "no live worker of the queue offers every node class and model file the workflow needs",
)

# Gateway (the SDK's contract)
GATEWAY_METADATA_UNSUPPORTED = _code(
    "gateway.metadata_unsupported", GatewayRejected,
    "the submit sets job labels (metadata), which this cluster does not keep (HTTP 422 metadata_not_supported)",
)


def error(code: str, message: str, **details: Any) -> DanceError:
    """Build the error of the branch that ``code`` is registered under."""
    info = CATALOG[code]
    return info.branch(code, message, details)


def from_dict(payload: dict[str, Any]) -> DanceError:
    """Rebuild an error from its ``as_dict`` form; unknown codes stay permanent."""
    code = str(payload.get("code", "unknown"))
    branch = CATALOG[code].branch if code in CATALOG else PermanentError
    return branch(code, str(payload.get("message", "")), dict(payload.get("details") or {}))

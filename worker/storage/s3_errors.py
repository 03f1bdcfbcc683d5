"""Translate what boto3 raises into the project's error tree.

The split follows the tree: refusals (credentials, a missing bucket, a policy) are permanent, while
connection failures, 5xx and throttling are retryable. Details name the operation, bucket, key and the
S3 error code, never the exception text, which may quote an endpoint with credentials in it.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ResponseStreamingError,
)

from producer.errors import (
    INPUT_FORBIDDEN,
    INPUT_NOT_FOUND,
    STORAGE_FORBIDDEN,
    STORAGE_UNAVAILABLE,
    DanceError,
    error,
)

#: S3 error codes that mean "you may not" or "there is no such bucket": retrying cannot help.
FORBIDDEN_CODES = frozenset({
    "AccessDenied", "AccountProblem", "AllAccessDisabled", "ExpiredToken", "InvalidAccessKeyId",
    "InvalidBucketName", "InvalidToken", "NoSuchBucket", "SignatureDoesNotMatch",
})
#: S3 error codes that mean "not now": the same request may succeed later. AWS answers a conditional
#: write that raced another write to the key with 409 ConditionalRequestConflict and asks for a retry.
TRANSIENT_CODES = frozenset({
    "ConditionalRequestConflict", "InternalError", "RequestTimeout", "RequestLimitExceeded",
    "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException", "TooManyRequests",
})
#: S3 error codes that say the object (or its bucket) is not there.
MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})
#: HTTP statuses that are transient although below 500: request timeout and throttling.
TRANSIENT_STATUSES = frozenset({408, 429})
#: First status of the 5xx range.
SERVER_ERROR_STATUS = 500
#: Statuses of a refusal.
FORBIDDEN_STATUSES = frozenset({401, 403})
#: Status of "not found".
NOT_FOUND_STATUS = 404
#: Status of a conditional request whose condition did not hold (an If-None-Match write to a taken key).
PRECONDITION_FAILED_STATUS = 412
#: S3 error code of that answer.
PRECONDITION_FAILED_CODE = "PreconditionFailed"

#: Exceptions boto3 raises when the network, not S3, failed.
_NETWORK_ERRORS = (ConnectionError, HTTPClientError, IncompleteReadError, ResponseStreamingError)
#: Exceptions that mean no usable credentials were found.
_CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError)


def root_cause(exc: BaseException) -> BaseException:
    """The ClientError or BotoCoreError behind boto3's transfer wrappers (S3UploadFailedError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (ClientError, BotoCoreError)):
            found: BaseException = current
            return found
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return exc


def client_error_parts(exc: ClientError) -> tuple[str, int]:
    """The S3 error code and HTTP status of a ClientError."""
    response: dict[str, Any] = dict(exc.response or {})
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def is_missing(exc: BaseException) -> bool:
    """Whether a ClientError says the object or bucket does not exist."""
    if not isinstance(exc, ClientError):
        return False
    code, status = client_error_parts(exc)
    return code in MISSING_CODES or status == NOT_FOUND_STATUS


def is_precondition_failed(exc: BaseException) -> bool:
    """Whether a ClientError says a conditional request's condition did not hold."""
    if not isinstance(exc, ClientError):
        return False
    code, status = client_error_parts(exc)
    return code == PRECONDITION_FAILED_CODE or status == PRECONDITION_FAILED_STATUS


def is_missing_bucket(exc: BaseException) -> bool:
    """Whether a ClientError says the bucket itself does not exist."""
    return isinstance(exc, ClientError) and client_error_parts(exc)[0] == "NoSuchBucket"


def storage_error(exc: BaseException, operation: str, **where: Any) -> DanceError:
    """The ``storage.*`` error for a failed S3 call."""
    cause = root_cause(exc)
    details: dict[str, Any] = {"operation": operation, **where, "cause": type(cause).__name__}
    if isinstance(cause, ClientError):
        code, status = client_error_parts(cause)
        details.update(s3_code=code, http_status=status)
        if code in TRANSIENT_CODES or status in TRANSIENT_STATUSES or status >= SERVER_ERROR_STATUS:
            return error(STORAGE_UNAVAILABLE, f"S3 {operation} failed and may succeed later", **details)
        if code in FORBIDDEN_CODES or status in FORBIDDEN_STATUSES:
            return error(STORAGE_FORBIDDEN, f"S3 refused {operation}: check credentials, bucket", **details)
        return error(STORAGE_FORBIDDEN, f"S3 rejected {operation}", **details)
    if isinstance(cause, _CREDENTIAL_ERRORS):
        return error(STORAGE_FORBIDDEN, "no usable S3 credentials were found", **details)
    if isinstance(cause, (*_NETWORK_ERRORS, BotoCoreError)):
        return error(STORAGE_UNAVAILABLE, f"S3 {operation} could not reach the endpoint", **details)
    return error(STORAGE_UNAVAILABLE, f"S3 {operation} failed unexpectedly", **details)


def input_error(exc: BaseException, uri: str) -> DanceError:
    """The error for a failed download of an input object: ``input.*`` for refusals, else storage's."""
    cause = root_cause(exc)
    if isinstance(cause, ClientError):
        code, status = client_error_parts(cause)
        if code in MISSING_CODES or status == NOT_FOUND_STATUS:
            return error(INPUT_NOT_FOUND, "the input object does not exist", uri=uri, s3_code=code)
        if code in FORBIDDEN_CODES or status in FORBIDDEN_STATUSES:
            return error(INPUT_FORBIDDEN, "S3 denied access to the input object", uri=uri, s3_code=code)
    return storage_error(exc, "download", uri=uri)

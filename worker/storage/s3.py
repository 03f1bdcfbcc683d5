"""Results in any S3-compatible store, named by ``s3://bucket/prefix``.

Configuration follows boto3's own conventions and nothing else: the endpoint comes from
``AWS_ENDPOINT_URL`` (boto3 reads it natively), credentials from the standard chain, the region from
``AWS_REGION`` (as the other AWS SDKs read it), then boto3's chain (``AWS_DEFAULT_REGION``, the config
file), then ``us-east-1``. Retries are boto3's (``AWS_RETRY_MODE``, ``AWS_MAX_ATTEMPTS``).

Uploads use boto3's managed transfer, which switches to multipart above a threshold. Results get
presigned GET URLs signed with SigV4.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.session
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from producer.errors import (
    INPUT_FORBIDDEN,
    INPUT_SCHEME,
    INPUT_TOO_LARGE,
    STORAGE_FORBIDDEN,
    STORAGE_NOT_FOUND,
    STORAGE_TOO_LARGE,
    DanceError,
    error,
)
from worker.storage.base import (
    CHUNK_BYTES,
    HashingReader,
    ListedKey,
    Readable,
    StoredObject,
    clean_key,
    clean_prefix,
    file_sha256,
)
from worker.storage.s3_errors import (
    input_error,
    is_missing,
    is_missing_bucket,
    is_precondition_failed,
    storage_error,
)

#: Region when neither the environment nor the config file names one.
DEFAULT_REGION = "us-east-1"
#: Size above which uploads become multipart, in bytes (boto3's default, 8 MiB).
DEFAULT_MULTIPART_THRESHOLD_BYTES = 8 << 20
#: Size of one multipart part, in bytes (boto3 raises anything below 5 MiB to 5 MiB).
DEFAULT_MULTIPART_CHUNK_BYTES = 8 << 20
#: Parts uploaded in parallel for one file.
DEFAULT_MAX_CONCURRENCY = 4
#: Parts of a streamed upload held in memory at once. s3transfer's default (10 parts, plus one per
#: submission thread) held ~120 MB for a 1 GB stream; this bounds it near
#: (max_in_memory + 1) * multipart_chunk_bytes (24 MB with 8 MiB parts).
DEFAULT_MAX_IN_MEMORY_CHUNKS = 2
#: TCP connect timeout of one S3 call, in seconds.
DEFAULT_S3_CONNECT_TIMEOUT_S = 10.0
#: Socket read timeout of one S3 call, in seconds.
DEFAULT_S3_READ_TIMEOUT_S = 60.0
#: Most keys one DeleteObjects call accepts.
DELETE_BATCH_KEYS = 1000
#: Host suffixes of AWS's own S3 endpoints, which serve virtual-hosted buckets.
AWS_HOST_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn")

#: Everything boto3 raises on purpose.
S3_ERRORS = (ClientError, BotoCoreError, Boto3Error)


@dataclass(frozen=True)
class TransferSettings:
    """How S3 calls and uploads behave."""

    multipart_threshold_bytes: int = DEFAULT_MULTIPART_THRESHOLD_BYTES
    multipart_chunk_bytes: int = DEFAULT_MULTIPART_CHUNK_BYTES
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_in_memory_chunks: int = DEFAULT_MAX_IN_MEMORY_CHUNKS
    connect_timeout_s: float = DEFAULT_S3_CONNECT_TIMEOUT_S
    read_timeout_s: float = DEFAULT_S3_READ_TIMEOUT_S


def make_client(transfer: TransferSettings, environ: Mapping[str, str]) -> Any:
    """An S3 client configured the boto3 way, with path-style addressing for non-AWS endpoints.

    S3-compatible servers (SeaweedFS, MinIO) behind a plain host name such as ``seaweedfs:8333``
    rarely serve ``bucket.seaweedfs``, so path style is chosen for them unless the AWS config file
    picks an addressing style itself.
    """
    core = botocore.session.get_session()
    session = boto3.session.Session(botocore_session=core)
    region = environ.get("AWS_REGION") or session.region_name or DEFAULT_REGION
    config = Config(
        signature_version="s3v4",
        connect_timeout=transfer.connect_timeout_s,
        read_timeout=transfer.read_timeout_s,
    )
    client = session.client("s3", region_name=region, config=config)
    host = urlsplit(client.meta.endpoint_url).hostname or ""
    configured_style = (core.get_scoped_config().get("s3") or {}).get("addressing_style")
    if not host.endswith(AWS_HOST_SUFFIXES) and not configured_style:
        path_style = config.merge(Config(s3={"addressing_style": "path"}))
        client = session.client("s3", region_name=region, config=path_style)
    return client


class S3Storage:
    """A bucket and key prefix; ``uri_for`` gives ``s3://`` URIs, ``url_for`` presigned GET URLs."""

    def __init__(
        self, client: Any, bucket: str, prefix: str, presign_expires_s: int, transfer: TransferSettings
    ) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = clean_prefix(prefix) if prefix.strip("/") else ""
        self._presign_expires_s = presign_expires_s
        self._transfer = TransferConfig(
            multipart_threshold=transfer.multipart_threshold_bytes,
            multipart_chunksize=transfer.multipart_chunk_bytes,
            max_concurrency=transfer.max_concurrency,
        )
        # boto3's TransferConfig takes these s3transfer settings as attributes only. One reader thread
        # pulls a stream; more would each hold one more part.
        self._transfer.max_in_memory_upload_chunks = transfer.max_in_memory_chunks
        self._transfer.max_submission_concurrency = 1

    def _full(self, key: str) -> str:
        key = clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _stored(self, key: str, size: int, digest: str, content_type: str) -> StoredObject:
        return StoredObject(key, self.uri_for(key), self.url_for(key), size, digest, content_type)

    def put_file(self, key: str, path: Path, content_type: str) -> StoredObject:
        full = self._full(key)
        # Hashed in a pass of its own so that upload_file may send parts in parallel, out of order.
        size, digest = file_sha256(path)
        try:
            self._client.upload_file(
                str(path), self.bucket, full, ExtraArgs={"ContentType": content_type}, Config=self._transfer
            )
        except S3_ERRORS as exc:
            raise storage_error(exc, "upload", bucket=self.bucket, key=full) from exc
        return self._stored(key, size, digest, content_type)

    def put_stream(self, key: str, readable: Readable, content_type: str) -> StoredObject:
        full = self._full(key)
        reader = HashingReader(readable)
        try:
            self._client.upload_fileobj(
                reader, self.bucket, full, ExtraArgs={"ContentType": content_type}, Config=self._transfer
            )
        except S3_ERRORS as exc:
            raise storage_error(exc, "upload", bucket=self.bucket, key=full) from exc
        return self._stored(key, reader.bytes, reader.sha256, content_type)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> StoredObject:
        full = self._full(key)
        try:
            self._client.put_object(Bucket=self.bucket, Key=full, Body=data, ContentType=content_type)
        except S3_ERRORS as exc:
            raise storage_error(exc, "put", bucket=self.bucket, key=full) from exc
        return self._stored(key, len(data), hashlib.sha256(data).hexdigest(), content_type)

    def put_bytes_if_absent(self, key: str, data: bytes, content_type: str) -> StoredObject | None:
        full = self._full(key)
        try:
            # If-None-Match: * makes S3 itself refuse the write (412) when the key exists, atomically
            # against a concurrent writer; a HEAD first would leave a window between look and write.
            # SeaweedFS (4.48, as the tests run it) honours it; the tests check one winner of many threads.
            self._client.put_object(
                Bucket=self.bucket, Key=full, Body=data, ContentType=content_type, IfNoneMatch="*"
            )
        except S3_ERRORS as exc:
            if is_precondition_failed(exc):
                return None
            raise storage_error(exc, "put", bucket=self.bucket, key=full) from exc
        return self._stored(key, len(data), hashlib.sha256(data).hexdigest(), content_type)

    def exists(self, key: str) -> bool:
        full = self._full(key)
        try:
            self._client.head_object(Bucket=self.bucket, Key=full)
        except S3_ERRORS as exc:
            if not is_missing(exc):
                raise storage_error(exc, "head", bucket=self.bucket, key=full) from exc
            # HEAD answers a bare 404 for a missing bucket too; only the bucket check tells them apart.
            self.check()
            return False
        return True

    def read_bytes(self, key: str, max_bytes: int) -> bytes:
        full = self._full(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=full)
            body = response["Body"]
            try:
                if int(response.get("ContentLength", 0)) > max_bytes:
                    raise error(STORAGE_TOO_LARGE, "the stored object is larger than allowed", key=full)
                data: bytes = body.read(max_bytes + 1)
            finally:
                body.close()
        except S3_ERRORS as exc:
            if is_missing(exc) and not is_missing_bucket(exc):
                raise error(STORAGE_NOT_FOUND, "no stored object has this key", key=full) from exc
            raise storage_error(exc, "get", bucket=self.bucket, key=full) from exc
        if len(data) > max_bytes:
            raise error(STORAGE_TOO_LARGE, "the stored object is larger than allowed", key=full)
        return data

    def delete(self, key: str) -> None:
        full = self._full(key)
        try:
            # DeleteObject answers 204 whether or not the key existed, so a repeat needs no HEAD first.
            self._client.delete_object(Bucket=self.bucket, Key=full)
        except S3_ERRORS as exc:
            raise storage_error(exc, "delete", bucket=self.bucket, key=full) from exc

    def delete_prefix(self, prefix: str) -> int:
        folder = self._full(clean_prefix(prefix)) + "/"
        root = self.prefix + "/" if self.prefix else ""
        listing = self.list_keys(prefix)  # streamed: a page of keys at a time, deleted as it comes
        deleted = 0
        # The listed keys are relative to the root: put it back as it was, without re-checking a key S3 holds.
        while batch := [{"Key": root + listed.key} for listed in itertools.islice(listing, DELETE_BATCH_KEYS)]:
            try:
                deleted += self._delete_batch(batch)
            except S3_ERRORS as exc:
                raise storage_error(exc, "delete", bucket=self.bucket, prefix=folder) from exc
        return deleted

    def list_keys(self, prefix: str) -> Iterator[ListedKey]:
        folder = self._full(clean_prefix(prefix)) + "/"
        root = self.prefix + "/" if self.prefix else ""
        try:
            # list_objects_v2 answers at most 1,000 keys a page; the paginator asks for the next page
            # only when this generator's consumer has taken every key of the last one.
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder)
            for page in pages:
                for item in page.get("Contents", []):
                    yield ListedKey(str(item["Key"]).removeprefix(root), int(item.get("Size", 0)))
        except S3_ERRORS as exc:
            raise storage_error(exc, "list", bucket=self.bucket, prefix=folder) from exc

    def _delete_batch(self, keys: list[dict[str, str]]) -> int:
        response = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
        failures = response.get("Errors") or []
        if failures:
            first = failures[0]
            raise error(
                STORAGE_FORBIDDEN, "S3 refused to delete some objects",
                bucket=self.bucket, key=first.get("Key"), s3_code=first.get("Code"), failed=len(failures),
            )
        return len(keys)

    def _owned_key(self, uri: str) -> str | None:
        parts = urlsplit(uri)
        key = parts.path.lstrip("/")
        if parts.scheme != "s3" or parts.netloc != self.bucket or parts.query or parts.fragment:
            return None
        if self.prefix and not key.startswith(self.prefix + "/"):
            return None
        try:
            return clean_key(key)
        except DanceError:
            return None

    def owns(self, uri: str) -> bool:
        return self._owned_key(uri) is not None

    def download(self, uri: str, dest_path: Path, max_bytes: int) -> int:
        scheme = urlsplit(uri).scheme
        if scheme != "s3":
            raise error(INPUT_SCHEME, "this storage holds only s3:// objects", scheme=scheme)
        key = self._owned_key(uri)
        if key is None:
            # The worker's credentials may reach other buckets; fetching only from our own bucket and
            # prefix keeps a job request from reading whatever those credentials can see.
            raise error(INPUT_FORBIDDEN, "the object lies outside this worker's bucket and prefix", uri=uri)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            if int(response.get("ContentLength", 0)) > max_bytes:
                response["Body"].close()
                raise error(INPUT_TOO_LARGE, "the input object is larger than the download cap", uri=uri)
            return _stream_to(response["Body"], dest_path, max_bytes, uri)
        except S3_ERRORS as exc:
            dest_path.unlink(missing_ok=True)
            raise input_error(exc, uri) from exc

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def url_for(self, key: str) -> str:
        params = {"Bucket": self.bucket, "Key": self._full(key)}
        try:
            url: str = self._client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=self._presign_expires_s
            )
        except S3_ERRORS as exc:
            raise storage_error(exc, "presign", bucket=self.bucket, key=params["Key"]) from exc
        return url

    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except S3_ERRORS as exc:
            if is_missing(exc):
                raise error(STORAGE_FORBIDDEN, "the bucket does not exist", bucket=self.bucket) from exc
            raise storage_error(exc, "head_bucket", bucket=self.bucket) from exc


def _stream_to(body: Any, dest_path: Path, max_bytes: int, uri: str) -> int:
    size = 0
    try:
        with dest_path.open("wb") as out:
            for chunk in body.iter_chunks(CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise error(INPUT_TOO_LARGE, "the input object is larger than the download cap", uri=uri)
                out.write(chunk)
    except BaseException:
        dest_path.unlink(missing_ok=True)
        raise
    finally:
        body.close()
    return size

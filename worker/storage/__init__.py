"""Object storage for results and uploaded inputs: a local folder or any S3 endpoint.

``open_storage`` picks the backend from the URL's scheme. Keys are laid out as ``<job_id>/...`` below
the URL's path (the prefix), so one job's objects share a folder that ``delete_prefix`` can remove.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from producer.errors import CONFIG_INVALID, error
from worker.settings import DEFAULT_PRESIGN_EXPIRES_S
from worker.storage.base import Readable, Storage, StoredObject
from worker.storage.local import LocalStorage, path_from_file_uri

if TYPE_CHECKING:
    from worker.storage.s3 import TransferSettings

__all__ = [
    "LocalStorage",
    "Readable",
    "Storage",
    "StoredObject",
    "open_storage",
]

#: The longest presigned URL lifetime S3 accepts, in seconds (7 days).
MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600


def open_storage(
    url: str,
    *,
    presign_expires_s: int = DEFAULT_PRESIGN_EXPIRES_S,
    transfer: TransferSettings | None = None,
    environ: Mapping[str, str] | None = None,
) -> Storage:
    """The storage a ``file:///abs/path`` or ``s3://bucket/prefix`` URL names.

    Nothing is contacted here; call ``check()`` to find out whether the storage answers. ``environ``
    (default: the process environment) only supplies ``AWS_REGION``; everything else S3 needs is read
    by boto3 itself.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        return LocalStorage(path_from_file_uri(url))
    if parts.scheme == "s3":
        if not parts.netloc or parts.query or parts.fragment:
            raise error(CONFIG_INVALID, "an S3 storage URL must be s3://bucket[/prefix]", url=url)
        if not 0 < presign_expires_s <= MAX_PRESIGN_EXPIRES_S:
            raise error(
                CONFIG_INVALID, "presigned URLs must live between 1 second and 7 days",
                presign_expires_s=presign_expires_s,
            )
        # Imported here, botocore too: a producer that only stages files into a local folder needs no boto3.
        from botocore.exceptions import BotoCoreError

        from worker.storage.s3 import S3Storage, TransferSettings, make_client

        settings = transfer or TransferSettings()
        try:
            client = make_client(settings, os.environ if environ is None else environ)
        except BotoCoreError as exc:
            # A named profile that does not exist, a config file that does not parse.
            cause = type(exc).__name__
            raise error(CONFIG_INVALID, "the AWS configuration is unusable", cause=cause) from exc
        return S3Storage(client, parts.netloc, parts.path, presign_expires_s, settings)
    raise error(CONFIG_INVALID, "the storage URL must start with file:// or s3://", scheme=parts.scheme)

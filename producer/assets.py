"""The asset store: content-addressed blobs in object storage, asset records in Redis.

An *asset* is a record (``dance:asset:<uuid>``) that names a *blob*: immutable bytes stored once under
``assets/blake3/<64 hex>`` and indexed by ``dance:asset-blob:<64 hex>``. Uploading the same bytes twice
stores one blob and mints two records (each with its own owner and file name); the second upload
answers ``created_new=False``. Records and blob indexes live ``ASSET_TTL_S`` and are refreshed
whenever an asset or its blob is reused, and a blob's index is only ever lengthened, so it always
outlives the records over it. A blob whose every record expired is deleted by the sweep
(producer/asset_sweep.py).
``dance:asset-refs:<64 hex>`` lists the records over a blob (kept like its index): deleting the last
live one deletes the blob from storage too (``delete``; the scripts are producer/asset_blobs.py).

Blobs are not owned, records are. ``dance:asset-owners:<64 hex>`` lists the owners who have
shown they hold a blob's bytes (they uploaded them, or a job of theirs wrote them); only they may mint
a record from the bare hash (``from_hash``) or learn that the blob exists, because on a gateway with
several API keys a hash alone must not let one key read another key's bytes.

Writing a blob needs no only-if-absent write: its key is its content's hash, so writers that race for
a key write the same bytes; an upload that races a delete of the same bytes puts them back
(``store_spooled``). The gateway and the workers both use this module; it imports nothing of
theirs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis as redis_lib

from producer import keys
from producer.asset_blobs import (
    FREED,
    MISSING,
    BlobKeys,
    blob_index_key,
    blob_owners_key,
    blob_refs_key,
    mint_if_held,
    record_key,
    release_deleting,
    unlink_record,
    wait_while_deleting,
)
from producer.asset_refs import ASSET_REF_TYPE, asset_ref_id, canonical_id, refs_in
from producer.asset_spool import Spool, Spooled, file_blake3
from producer.errors import (
    ASSET_HASH_MISMATCH,
    ASSET_MISSING,
    DanceError,
    error,
)
from worker.storage.base import Readable, Storage, iter_chunks

# The references (asset_refs), the upload spool (asset_spool) and the Redis key names (asset_blobs, beside
# the scripts that use them) are modules of their own for size; callers import them from here.
__all__ = [
    "ASSET_REF_TYPE", "ASSET_TTL_S", "AssetRecord", "Spool", "Spooled", "asset_ref_id", "blob_for_hash",
    "blob_index_key", "blob_key", "blob_owners_key", "blob_refs_key", "check_expected_hash", "check_refs",
    "delete", "file_blake3", "from_hash", "load", "load_for", "parse_hash", "record_key", "refs_in",
    "store_file", "store_spooled", "store_stream", "touch", "visible_to",
]

log = logging.getLogger(__name__)

#: How long asset records and blob indexes live after their last use, in seconds (as long as job keys).
ASSET_TTL_S = keys.JOB_KEY_TTL_S
#: Storage folder of blobs; a blob's key is this, a slash, and its blake3 in lowercase hex.
BLOB_FOLDER = "assets/blake3"
#: How a hash is spelled in records, the API and asset references.
HASH_PREFIX = "blake3:"
#: A blake3 digest in lowercase hex (32 bytes).
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
#: Content type of a blob whose uploader named none.
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def blob_key(hex_digest: str) -> str:
    """Storage key of a blob."""
    return f"{BLOB_FOLDER}/{hex_digest}"


@dataclass(frozen=True)
class AssetRecord:
    """One asset: which blob it names, who may use it, and what job (if any) wrote it."""

    id: str
    #: ``blake3:<hex>``.
    hash: str
    size_bytes: int
    content_type: str
    file_path: str | None
    #: When the record was minted, epoch seconds.
    created_at: float
    #: Storage key of the blob.
    key: str
    #: API key name of the owner, "" for none.
    owner: str
    #: Set for job outputs.
    job_id: str | None

    @property
    def hex_digest(self) -> str:
        return self.hash.removeprefix(HASH_PREFIX)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> AssetRecord:
        data: dict[str, Any] = json.loads(text)
        return cls(
            id=str(data["id"]),
            hash=str(data["hash"]),
            size_bytes=int(data["size_bytes"]),
            content_type=str(data["content_type"]),
            file_path=None if data.get("file_path") is None else str(data["file_path"]),
            created_at=float(data["created_at"]),
            key=str(data["key"]),
            owner=str(data.get("owner", "")),
            job_id=None if data.get("job_id") is None else str(data["job_id"]),
        )


def parse_hash(value: object) -> str | None:
    """The lowercase hex digest of ``blake3:<64 hex>`` (or of bare hex), None for anything else."""
    if not isinstance(value, str):
        return None
    hex_digest = value.strip().lower().removeprefix(HASH_PREFIX)
    return hex_digest if HEX_DIGEST.fullmatch(hex_digest) else None


# Reading --------------------------------------------------------------------------------------------------
def load(redis: redis_lib.Redis, asset_id: str) -> AssetRecord | None:
    """The asset record, None if there is none (or the id is not a UUID)."""
    canonical = canonical_id(asset_id)
    if canonical is None:
        return None
    raw = redis.get(record_key(canonical))
    return None if raw is None else AssetRecord.from_json(raw)


def load_for(redis: redis_lib.Redis, asset_id: str, owner: str) -> AssetRecord | None:
    """The asset if ``owner`` may use it, else None: another owner's asset looks exactly like none."""
    record = load(redis, asset_id)
    return record if record is not None and visible_to(record, owner) else None


def visible_to(record: AssetRecord, owner: str) -> bool:
    """Whether ``owner`` may use the asset: only its own owner may.

    A keyless gateway gives every caller the owner "", so there every "" asset is everyone's.
    """
    return record.owner == owner


def blob_for_hash(redis: redis_lib.Redis, hex_digest: str, *, owner: str | None = None) -> dict[str, Any] | None:
    """The blob index entry of ``hex_digest``, None if unknown.

    With ``owner`` given, also None unless that owner has shown it holds the bytes (see the module
    docstring); ``owner=None`` is for the cluster's own use (a worker resolving a record it trusts).
    """
    digest = parse_hash(hex_digest)
    if digest is None:
        return None
    raw = redis.get(blob_index_key(digest))
    if raw is None:
        return None
    if owner is not None and not redis.sismember(blob_owners_key(digest), owner):
        return None
    entry: dict[str, Any] = json.loads(raw)
    return entry


def check_refs(redis: redis_lib.Redis, workflow: dict[str, Any], *, owner: str) -> dict[str, AssetRecord]:
    """Every asset the graph references, by id, if ``owner`` may use each; else ``asset.missing``.

    The error's details list every id that is unknown or not the owner's, so one answer names them all.
    """
    records: dict[str, AssetRecord] = {}
    missing: list[str] = []
    for _node_id, _name, asset_id in refs_in(workflow):
        if asset_id in records or asset_id in missing:
            continue
        record = load_for(redis, asset_id, owner)
        if record is None:
            missing.append(asset_id)
        else:
            records[asset_id] = record
    if missing:
        raise error(ASSET_MISSING, "the workflow references assets that do not exist", asset_ids=missing)
    return records


# Writing --------------------------------------------------------------------------------------------------
def _new_record(
    spooled: Spooled, *, content_type: str, file_path: str | None, owner: str, job_id: str | None,
) -> AssetRecord:
    return AssetRecord(
        id=str(uuid.uuid4()), hash=HASH_PREFIX + spooled.hex_digest, size_bytes=spooled.size_bytes,
        content_type=content_type, file_path=file_path, created_at=time.time(),
        key=blob_key(spooled.hex_digest), owner=owner, job_id=job_id,
    )


def _register(
    redis: redis_lib.Redis, spooled: Spooled, *, content_type: str, file_path: str | None, owner: str,
    job_id: str | None, ttl_s: int,
) -> AssetRecord:
    """Mint a record over a stored blob and refresh the blob's index, owners and refs, in one transaction."""
    record = _new_record(spooled, content_type=content_type, file_path=file_path, owner=owner, job_id=job_id)
    index = json.dumps({"key": record.key, "size_bytes": record.size_bytes, "content_type": content_type})
    names = BlobKeys(record.id, spooled.hex_digest)
    pipe = redis.pipeline(transaction=True)
    pipe.set(names.record, record.to_json(), ex=ttl_s)
    # NX: the first uploader's content type stays the blob's default; its TTL is extended either way.
    pipe.set(names.index, index, ex=ttl_s, nx=True)
    pipe.sadd(names.owners, owner)
    pipe.sadd(names.refs, record.id)
    for key in (names.index, names.owners, names.refs):
        _extend(pipe, key, ttl_s)
    pipe.execute()
    return record


def _extend(pipe: redis_lib.client.Pipeline, key: str, ttl_s: int) -> None:
    """Make a blob key live at least ``ttl_s`` more seconds, never shortening it (EXPIRE NX, then GT).

    A record with a short TTL must not cut short the index and refs of a blob that longer-lived records
    also name: the sweep (producer/asset_sweep.py) deletes a blob whose index is gone, so the index must
    outlive every record over the blob. NX gives a new set its first TTL; GT only ever lengthens one.
    """
    pipe.expire(key, ttl_s, nx=True)
    pipe.expire(key, ttl_s, gt=True)


def store_spooled(
    redis: redis_lib.Redis, storage: Storage, spooled: Spooled, *, content_type: str, file_path: str | None,
    owner: str, job_id: str | None = None, ttl_s: int = ASSET_TTL_S,
) -> tuple[AssetRecord, bool]:
    """Store an already hashed file as a blob unless storage has it, and register a record over it.

    Storage, not the Redis index, decides whether the blob exists: an index that outlived its blob
    (a bucket emptied by hand) must not yield records over nothing. The bool is ``created_new``: two
    uploads of new bytes that race may both answer True, and both stored the same bytes. Storage is
    asked once more after the record is registered, for a delete of the same bytes that ran beside.
    """
    key = blob_key(spooled.hex_digest)
    created_new = not storage.exists(key)
    if created_new:
        storage.put_file(key, spooled.path, content_type)
    record = _register(
        redis, spooled, content_type=content_type, file_path=file_path, owner=owner, job_id=job_id, ttl_s=ttl_s,
    )
    # A delete of the last record over these bytes may have run beside this upload, and the blob found
    # or put above may be the one it deletes. Its script ran either after _register's transaction (then
    # it saw this record in the refs and freed nothing) or before it (then it set the deleting marker
    # before this look, and removes it only once the blob has left storage). So waiting while the marker
    # stands and then checking storage once more is enough; the check also covers a delete that ran
    # whole between the first check and _register, marker already gone.
    wait_while_deleting(redis, spooled.hex_digest)
    if not storage.exists(key):
        try:
            storage.put_file(key, spooled.path, content_type)
        except DanceError:
            delete(redis, storage, record.id, owner=owner)  # no record may outlive a failed upload
            raise
        created_new = True
    return record, created_new


def store_file(
    redis: redis_lib.Redis, storage: Storage, path: Path, *, content_type: str, file_path: str | None,
    owner: str, job_id: str | None = None, ttl_s: int = ASSET_TTL_S,
) -> tuple[AssetRecord, bool]:
    """Hash a local file (blake3, streamed), upload it only if its blob is absent, register a record."""
    size, hex_digest = file_blake3(path)
    return store_spooled(
        redis, storage, Spooled(path, hex_digest, size), content_type=content_type, file_path=file_path,
        owner=owner, job_id=job_id, ttl_s=ttl_s,
    )


def check_expected_hash(spooled: Spooled, expected_hash: str | None) -> None:
    """``asset.hash_mismatch`` unless the declared hash (if any) is the received bytes' blake3."""
    if expected_hash is None:
        return
    if parse_hash(expected_hash) != spooled.hex_digest:
        raise error(
            ASSET_HASH_MISMATCH, "the declared hash does not match the received bytes",
            expected=expected_hash[:80], received=HASH_PREFIX + spooled.hex_digest,
        )


def store_stream(
    redis: redis_lib.Redis, storage: Storage, readable: Readable, *, content_type: str, file_path: str | None,
    owner: str, job_id: str | None = None, ttl_s: int = ASSET_TTL_S, max_bytes: int | None = None,
    expected_hash: str | None = None, spool_dir: Path | None = None,
) -> tuple[AssetRecord, bool]:
    """Store a stream as an asset: spooled chunk by chunk to a temporary file while hashing, never held.

    Over ``max_bytes`` raises ``asset.too_large`` and a wrong ``expected_hash`` ``asset.hash_mismatch``,
    both before anything reaches storage or Redis; the temporary file is gone afterwards either way.
    """
    with Spool(max_bytes=max_bytes, directory=spool_dir) as spool:
        for chunk in iter_chunks(readable):
            spool.write(chunk)
        spooled = spool.finish()
        check_expected_hash(spooled, expected_hash)
        return store_spooled(
            redis, storage, spooled, content_type=content_type, file_path=file_path, owner=owner,
            job_id=job_id, ttl_s=ttl_s,
        )


def from_hash(
    redis: redis_lib.Redis, hex_digest: str, *, file_path: str | None, owner: str, content_type: str | None = None,
    ttl_s: int = ASSET_TTL_S,
) -> AssetRecord | None:
    """A new record over a blob ``owner`` has shown it holds, None if there is no such blob for them.

    ``hex_digest`` may be bare hex or ``blake3:<hex>``. The content type defaults to the blob's. The
    check and the write are one script, so a delete that frees the blob in between answers None, never
    a record over bytes that are leaving storage.
    """
    entry = blob_for_hash(redis, hex_digest, owner=owner)
    digest = parse_hash(hex_digest)
    if entry is None or digest is None:
        return None
    record = _new_record(
        Spooled(Path(os.devnull), digest, int(entry["size_bytes"])),
        content_type=content_type or str(entry.get("content_type") or DEFAULT_CONTENT_TYPE),
        file_path=file_path, owner=owner, job_id=None,
    )
    minted = mint_if_held(
        redis, BlobKeys(record.id, record.hex_digest), owner=owner, record_json=record.to_json(), ttl_s=ttl_s,
    )
    return record if minted else None


def touch(redis: redis_lib.Redis, record: AssetRecord, *, ttl_s: int = ASSET_TTL_S) -> None:
    """Refresh the TTL of an asset in use (a job references it) and of its blob's index, owners and refs."""
    names = BlobKeys(record.id, record.hex_digest)
    pipe = redis.pipeline(transaction=True)
    pipe.expire(names.record, ttl_s)
    for key in (names.index, names.owners, names.refs):
        _extend(pipe, key, ttl_s)
    pipe.execute()


def delete(redis: redis_lib.Redis, storage: Storage, asset_id: str, *, owner: str) -> bool:
    """Delete ``owner``'s asset; False if they have none with this id (another owner's included).

    When it was the last live record over its blob, the blob leaves storage too. A storage that fails
    then is logged, not raised: the record is gone either way (a retry would answer not found), and
    the bytes left behind are an orphan that a later upload of the same bytes simply reuses.
    """
    record = load_for(redis, asset_id, owner)
    if record is None:
        return False
    outcome, token = unlink_record(
        redis, BlobKeys(record.id, record.hex_digest), owner=owner, hash_value=record.hash,
    )
    if outcome == MISSING:
        return False  # a concurrent delete of the same asset won, or it expired since the load
    if outcome == FREED:
        try:
            storage.delete(record.key)
        except DanceError as exc:
            log.warning("asset %s: its blob %s stays in storage: %s", record.id, record.key, exc.code)
        finally:
            release_deleting(redis, record.hex_digest, token)
    return True

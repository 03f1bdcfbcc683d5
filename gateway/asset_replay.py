"""Idempotency-Key on asset uploads: the same key with the same bytes answers the same asset again.

The SDK mints one key per asset handle and sends it with the upload, so a commit repeated after a lost
answer must not mint a second record; the same key with other bytes is a client bug and answers 422
``idempotency_key_reuse``, the contract's code for a key reused with a different body. Keys are scoped
to their owner (one key's value can never name another key's asset) and kept as long as assets are.
"""

from __future__ import annotations

import hashlib
import json

import redis as redis_lib
from aiohttp import web

from producer import assets, keys
from producer.assets import AssetRecord
from producer.errors import ASSET_BAD_UPLOAD, ASSET_IDEMPOTENCY_REUSE, error

#: Header that carries the key (comfy_low.transport.post_assets sends it).
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: The longest key the contract allows, in characters.
IDEMPOTENCY_KEY_MAX_CHARS = 255
#: Code points below this (C0 controls) never appear in a key, nor DELETE, nor anything past ASCII.
FIRST_PRINTABLE, DELETE = 0x20, 0x7F


def upload_key(request: web.Request, owner: str) -> str | None:
    """The Redis key that remembers this upload's Idempotency-Key, None without one; 422 for a bad one."""
    value = request.headers.get(IDEMPOTENCY_HEADER)
    if value is None:
        return None
    if not 0 < len(value) <= IDEMPOTENCY_KEY_MAX_CHARS or any(not FIRST_PRINTABLE <= ord(c) < DELETE for c in value):
        raise error(ASSET_BAD_UPLOAD, "the Idempotency-Key must be 1-255 printable ASCII characters")
    # Hashed: the key is the caller's text, and owner and key together must make one safe Redis key.
    digest = hashlib.sha256(f"{owner}\0{value}".encode()).hexdigest()
    return f"{keys.PREFIX}:asset-idem:{digest}"


def replayed(redis: redis_lib.Redis, key: str, hex_digest: str) -> tuple[AssetRecord, bool] | None:
    """The asset an earlier upload under ``key`` made, and whether it was new then; None if none lives.

    ``asset.idempotency_key_reuse`` if that upload carried other bytes.
    """
    raw = redis.get(key)
    if raw is None:
        return None
    remembered = json.loads(raw)
    record = assets.load(redis, str(remembered["asset_id"]))
    if record is None:
        return None
    if record.hex_digest != hex_digest:
        raise error(ASSET_IDEMPOTENCY_REUSE, "this Idempotency-Key was used for an upload of other bytes",
                    asset_id=record.id)
    return record, bool(remembered["created_new"])


def remember(redis: redis_lib.Redis, key: str, record: AssetRecord, created_new: bool) -> None:
    """Keep what the upload under ``key`` made; NX: of two racing uploads the first answer stays."""
    value = json.dumps({"asset_id": record.id, "created_new": created_new})
    redis.set(key, value, nx=True, ex=assets.ASSET_TTL_S)

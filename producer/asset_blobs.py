"""Reference counting of blobs: which records name a blob, and the Redis scripts that mint and drop records
atomically against each other (used by producer/assets.py; a module of its own for size).

``dance:asset-refs:<hex>`` is the set of the ids of the records over a blob. It is written in the same
transaction that mints a record and lives as long as the blob's index. Deleting a record is one Lua
script, so no other Redis command runs between its look at the refs and its decision: it drops the
record, forgets ids whose record already expired, and when no live record is left it deletes the blob's
index, owners and refs and sets ``dance:asset-blob-deleting:<hex>`` (a token with a TTL) before the
caller deletes the blob from storage. Minting from a bare hash is a script too, so it never adds a
record to a blob whose index a delete has just removed. The sweep (producer/asset_sweep.py) frees a
blob whose records all expired the same way, by a script that sets the same marker.

The Redis key names of assets (records, and each blob's index, owners, refs and deleting marker) live here,
beside the scripts that use them; producer/assets.py re-exports them. The scripts read other records by a
key built inside Lua (the record prefix is an argument), which a Redis Cluster would refuse; the cluster
runs on one Redis (or Sentinel), where every key is local.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import redis as redis_lib

from producer import keys

#: How long a deleting marker lives, in seconds: the most that an upload of the same bytes waits for a
#: delete whose gateway died between freeing the blob in Redis and deleting it from storage.
DELETING_TTL_S = 300
#: How often an upload polls for a deleting marker to go, in seconds (a storage delete takes milliseconds).
DELETING_POLL_S = 0.05
#: What the delete script answers: no record the owner may delete, a record dropped, the blob freed.
MISSING, DROPPED, FREED = "missing", "dropped", "freed"
#: What the sweep script answers: a live index or record keeps the blob, a delete is already under way,
#: the blob is freed (marked) for the sweep to delete from storage.
KEPT, BUSY, SWEEP = "kept", "busy", "sweep"

# KEYS: record, refs, owners, index, deleting. ARGV: owner, asset id, blake3 hash, token, marker TTL (s),
# record key prefix. A record that is not in the refs set predates reference counting: its blob may have
# other records the set never saw, so such a delete drops the record and frees nothing.
_DELETE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 'missing' end
local record = cjson.decode(raw)
if record['owner'] ~= ARGV[1] or record['hash'] ~= ARGV[3] then return 'missing' end
redis.call('DEL', KEYS[1])
if redis.call('SREM', KEYS[2], ARGV[2]) == 0 then return 'dropped' end
local live, owner_has_one = 0, false
for _, member in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local other = redis.call('GET', ARGV[6] .. member)
  if not other then
    redis.call('SREM', KEYS[2], member)
  else
    live = live + 1
    if cjson.decode(other)['owner'] == ARGV[1] then owner_has_one = true end
  end
end
if live == 0 then
  redis.call('DEL', KEYS[4], KEYS[3], KEYS[2])
  redis.call('SET', KEYS[5], ARGV[4], 'EX', ARGV[5])
  return 'freed'
end
if not owner_has_one then redis.call('SREM', KEYS[3], ARGV[1]) end
return 'dropped'
"""

# KEYS: index, owners, refs, record. ARGV: owner, asset id, record JSON, TTL (s). 1 if minted, 0 if the
# blob's index is gone (never stored, expired, or freed by a delete) or the owner has not shown it holds it.
# The blob's keys are only ever lengthened (NX gives a new set its TTL, GT never shortens one), as in
# assets._extend: the index must outlive every record over the blob.
_MINT_IF_HELD = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('SET', KEYS[4], ARGV[3], 'EX', ARGV[4])
redis.call('SADD', KEYS[3], ARGV[2])
for i = 1, 3 do
  redis.call('EXPIRE', KEYS[i], ARGV[4], 'NX')
  redis.call('EXPIRE', KEYS[i], ARGV[4], 'GT')
end
return 1
"""

# KEYS: index, refs, owners, deleting. ARGV: token, marker TTL (s), record key prefix. The index is
# looked at first: every upload writes it in the transaction that mints its record, so an index that
# stands means a record was minted since the blob's last one expired (or one lives). The refs are then
# looked through as the delete script does, for a live record whose blob's index is gone (the index's
# TTL is only ever lengthened, so only an index lost by hand leaves one). With no live record left, the
# owners and refs name only records that expired, so they go with the blob.
_SWEEP = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'kept' end
if redis.call('EXISTS', KEYS[4]) == 1 then return 'busy' end
local live = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', ARGV[3] .. member) == 1 then live = live + 1 end
end
if live > 0 then return 'kept' end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[2])
return 'sweep'
"""

# KEYS: a marker or lock. ARGV: token. Deletes it only if it still holds this token (it is still ours).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def record_key(asset_id: str) -> str:
    """Redis key of an asset record (JSON)."""
    return f"{keys.PREFIX}:asset:{asset_id}"


#: What every record's key starts with: the scripts build the keys of the records a refs set names.
RECORD_PREFIX = record_key("")


def blob_index_key(hex_digest: str) -> str:
    """Redis key of a blob's index entry (JSON ``{"key", "size_bytes", "content_type"}``)."""
    return f"{keys.PREFIX}:asset-blob:{hex_digest}"


def blob_owners_key(hex_digest: str) -> str:
    """Redis set of the owners who have shown they hold a blob's bytes."""
    return f"{keys.PREFIX}:asset-owners:{hex_digest}"


def blob_refs_key(hex_digest: str) -> str:
    """Redis set of the ids of the records over a blob."""
    return f"{keys.PREFIX}:asset-refs:{hex_digest}"


def blob_deleting_key(hex_digest: str) -> str:
    """Redis key set while a freed blob is being deleted from storage (holds the deleting gateway's token)."""
    return f"{keys.PREFIX}:asset-blob-deleting:{hex_digest}"


@dataclass(frozen=True)
class BlobKeys:
    """The Redis keys of one record and of the blob it names."""

    asset_id: str
    hex_digest: str

    @property
    def record(self) -> str:
        return record_key(self.asset_id)

    @property
    def index(self) -> str:
        return blob_index_key(self.hex_digest)

    @property
    def owners(self) -> str:
        return blob_owners_key(self.hex_digest)

    @property
    def refs(self) -> str:
        return blob_refs_key(self.hex_digest)

    @property
    def deleting(self) -> str:
        return blob_deleting_key(self.hex_digest)


def _text(outcome: object) -> str:
    """A script's string answer, as redis-py returns it (bytes, or str on a decoding client)."""
    return outcome.decode() if isinstance(outcome, bytes) else str(outcome)


def unlink_record(redis: redis_lib.Redis, names: BlobKeys, *, owner: str, hash_value: str) -> tuple[str, str]:
    """Drop ``owner``'s record atomically: (MISSING, ""), (DROPPED, "") or (FREED, the marker's token).

    After FREED the caller deletes the blob from storage and then calls :func:`release_deleting`.
    """
    token = uuid.uuid4().hex
    outcome = _text(redis.register_script(_DELETE)(
        keys=[names.record, names.refs, names.owners, names.index, names.deleting],
        args=[owner, names.asset_id, hash_value, token, DELETING_TTL_S, RECORD_PREFIX],
    ))
    return outcome, token if outcome == FREED else ""


def mint_if_held(redis: redis_lib.Redis, names: BlobKeys, *, owner: str, record_json: str, ttl_s: int) -> bool:
    """Write a record over a blob if its index exists and ``owner`` is among its owners, atomically."""
    minted = redis.register_script(_MINT_IF_HELD)(
        keys=[names.index, names.owners, names.refs, names.record], args=[owner, names.asset_id, record_json, ttl_s],
    )
    return bool(minted)


def sweep_decisions(redis: redis_lib.Redis, digests: list[str]) -> list[tuple[str, str]]:
    """The sweep script's answer for each blob, in one round trip: (KEPT | BUSY, "") or (SWEEP, token).

    After SWEEP the caller deletes the blob from storage and then calls :func:`release_deleting`.
    """
    script = redis.register_script(_SWEEP)
    tokens = [uuid.uuid4().hex for _ in digests]
    pipe = redis.pipeline(transaction=False)
    for digest, token in zip(digests, tokens, strict=True):
        script(keys=[blob_index_key(digest), blob_refs_key(digest), blob_owners_key(digest), blob_deleting_key(digest)],
               args=[token, DELETING_TTL_S, RECORD_PREFIX], client=pipe)
    answers = []
    for outcome, token in zip(map(_text, pipe.execute()), tokens, strict=True):
        answers.append((outcome, token if outcome == SWEEP else ""))
    return answers


def release_deleting(redis: redis_lib.Redis, hex_digest: str, token: str) -> None:
    """Delete the blob's deleting marker if it still holds ``token`` (a later delete may have set its own)."""
    release_token(redis, blob_deleting_key(hex_digest), token)


def release_token(redis: redis_lib.Redis, key: str, token: str) -> bool:
    """Delete ``key`` if it still holds ``token``, atomically; whether it did (a marker's or a lock's release)."""
    return bool(redis.register_script(_RELEASE)(keys=[key], args=[token]))


def wait_while_deleting(redis: redis_lib.Redis, hex_digest: str, *, timeout_s: float = DELETING_TTL_S) -> None:
    """Block until no delete of the blob is in progress, at most ``timeout_s`` (one EXISTS when none is).

    The bound is the marker's own TTL: a marker outlives its delete only when the deleting gateway died,
    and then it expires by itself.
    """
    key = blob_deleting_key(hex_digest)
    deadline = time.monotonic() + timeout_s
    while redis.exists(key) and time.monotonic() < deadline:
        time.sleep(DELETING_POLL_S)

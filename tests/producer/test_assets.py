"""The asset store against real Redis and real storage (a folder and SeaweedFS S3): dedup, TTLs,
owners, streamed uploads that leave nothing behind, and core/ASSET references."""

from __future__ import annotations

import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
from blake3 import blake3

from producer import assets
from producer.errors import DanceError
from tests.fixtures.media_server import GeneratorStream
from worker.storage import Storage
from worker.storage.base import CHUNK_BYTES

#: Read cap for the stored blobs of these tests, in bytes.
READ_CAP_BYTES = 64 << 20
#: A short TTL that a reuse must lengthen, in seconds.
SHORT_TTL_S = 100
#: A body several streaming chunks long, in bytes, with an odd tail.
MULTI_CHUNK_BYTES = 3 * CHUNK_BYTES + 17
#: A body large enough that holding it whole would show in the memory peak, in bytes.
LARGE_BODY_BYTES = 16 * CHUNK_BYTES
#: The most memory a streamed upload of LARGE_BODY_BYTES may peak at, in bytes (a few chunks).
STREAM_PEAK_LIMIT_BYTES = 6 * CHUNK_BYTES


def body_chunks(total_bytes: int, chunk_bytes: int = 256 << 10) -> Iterator[bytes]:
    """``total_bytes`` of a pattern that differs from chunk to chunk, made one chunk at a time."""
    for index, start in enumerate(range(0, total_bytes, chunk_bytes)):
        length = min(chunk_bytes, total_bytes - start)
        yield (bytes([index % 256]) + bytes(range(256)))[: 257] * (length // 257) + b"x" * (length % 257)


def body(total_bytes: int) -> bytes:
    return b"".join(body_chunks(total_bytes))


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def asset_keys(redis: redis_lib.Redis) -> list[bytes]:
    return sorted(redis.scan_iter("dance:asset*"))


def test_the_same_bytes_stored_twice_are_one_blob_and_the_second_store_answers_created_new_false(
    redis: redis_lib.Redis, storage: Storage, tmp_path: Path
) -> None:
    # Given a file stored as an asset
    data = b"\x89PNG one image" * 1000
    first, first_new = assets.store_file(
        redis, storage, write(tmp_path / "a.png", data), content_type="image/png", file_path="a.png", owner="k1",
    )
    # When the same bytes are stored again under another name
    second, second_new = assets.store_file(
        redis, storage, write(tmp_path / "b.png", data), content_type="image/png", file_path="b.png", owner="k1",
    )
    # Then both records name one blob under assets/blake3/<hex>, holding the bytes, and only the first was new
    digest = blake3(data).hexdigest()
    assert (first_new, second_new) == (True, False)
    assert first.id != second.id
    assert first.key == second.key == f"assets/blake3/{digest}"
    assert first.hash == second.hash == f"blake3:{digest}"
    assert storage.read_bytes(first.key, READ_CAP_BYTES) == data
    assert (first.file_path, second.file_path) == ("a.png", "b.png")


def test_a_stored_asset_loads_back_with_every_field_it_was_stored_with(
    redis: redis_lib.Redis, folder_storage: Storage, tmp_path: Path
) -> None:
    # Given a job output stored as an asset
    record, _ = assets.store_file(
        redis, folder_storage, write(tmp_path / "out.mp4", b"video bytes"), content_type="video/mp4",
        file_path="out.mp4", owner="studio", job_id="job-7",
    )
    # When it is loaded by id
    loaded = assets.load(redis, record.id)
    # Then it is the same record, and the blob index names its key, size and type
    assert loaded == record
    assert (loaded.size_bytes, loaded.owner, loaded.job_id, loaded.content_type) == (11, "studio", "job-7", "video/mp4")
    index = assets.blob_for_hash(redis, record.hash)
    assert index == {"key": record.key, "size_bytes": 11, "content_type": "video/mp4"}


def test_an_unknown_or_malformed_asset_id_loads_as_none(redis: redis_lib.Redis) -> None:
    # Given no assets, When ids that name nothing are loaded, Then each is None
    for asset_id in (str(uuid.uuid4()), "not-a-uuid", "../../etc", str(uuid.uuid4()).upper()):
        assert assets.load(redis, asset_id) is None


def test_storing_a_known_blob_again_refreshes_the_ttl_of_its_index_and_owners(
    redis: redis_lib.Redis, folder_storage: Storage, tmp_path: Path
) -> None:
    # Given an asset stored with a short TTL
    path = write(tmp_path / "a.bin", b"refresh me")
    record, _ = assets.store_file(
        redis, folder_storage, path, content_type="application/octet-stream", file_path=None, owner="",
        ttl_s=SHORT_TTL_S,
    )
    assert 0 < redis.ttl(assets.blob_index_key(record.hex_digest)) <= SHORT_TTL_S
    # When the same bytes are stored again with the default TTL
    again, created_new = assets.store_file(
        redis, folder_storage, path, content_type="application/octet-stream", file_path=None, owner="",
    )
    # Then the blob's index and owner set live the full TTL again, like the new record
    assert not created_new
    for key in (assets.blob_index_key(record.hex_digest), assets.blob_owners_key(record.hex_digest),
                assets.record_key(again.id)):
        assert redis.ttl(key) > assets.ASSET_TTL_S - 60, key


def test_touching_an_asset_in_use_refreshes_its_record_and_blob_ttls(
    redis: redis_lib.Redis, folder_storage: Storage, tmp_path: Path
) -> None:
    # Given an asset with a short TTL
    record, _ = assets.store_file(
        redis, folder_storage, write(tmp_path / "a.bin", b"in use"), content_type="image/png", file_path=None,
        owner="", ttl_s=SHORT_TTL_S,
    )
    # When a job that uses it touches it
    assets.touch(redis, record)
    # Then the record, the blob index and the owner set all live the full TTL
    for key in (assets.record_key(record.id), assets.blob_index_key(record.hex_digest),
                assets.blob_owners_key(record.hex_digest)):
        assert redis.ttl(key) > assets.ASSET_TTL_S - 60, key


def test_from_hash_mints_a_new_record_over_a_blob_its_owner_uploaded(
    redis: redis_lib.Redis, storage: Storage, tmp_path: Path
) -> None:
    # Given bytes uploaded by owner k1
    uploaded, _ = assets.store_file(
        redis, storage, write(tmp_path / "a.png", b"pixels"), content_type="image/png", file_path="a.png", owner="k1",
    )
    # When k1 mints an asset from the bare hash
    minted = assets.from_hash(redis, uploaded.hash, file_path="again.png", owner="k1")
    # Then it is a new record over the same blob, with the blob's content type and size
    assert minted is not None and minted.id != uploaded.id
    assert (minted.key, minted.size_bytes, minted.content_type) == (uploaded.key, 6, "image/png")
    assert assets.load(redis, minted.id) == minted
    assert minted.job_id is None


def test_from_hash_answers_none_for_an_unknown_hash_and_for_another_owners_blob(
    redis: redis_lib.Redis, folder_storage: Storage, tmp_path: Path
) -> None:
    # Given bytes uploaded by owner k1 only
    uploaded, _ = assets.store_file(
        redis, folder_storage, write(tmp_path / "a.png", b"private"), content_type="image/png", file_path=None,
        owner="k1",
    )
    before = asset_keys(redis)
    # When another owner, or anyone with an unknown or malformed hash, asks to mint
    other = assets.from_hash(redis, uploaded.hash, file_path=None, owner="k2")
    unknown = assets.from_hash(redis, "blake3:" + "0" * 64, file_path=None, owner="k1")
    malformed = assets.from_hash(redis, "sha256:abc", file_path=None, owner="k1")
    # Then none is minted, nothing is written, and the blob is invisible to k2
    assert (other, unknown, malformed) == (None, None, None)
    assert asset_keys(redis) == before
    assert assets.blob_for_hash(redis, uploaded.hash, owner="k2") is None
    assert assets.blob_for_hash(redis, uploaded.hash, owner="k1") is not None


def test_an_owner_who_uploads_the_bytes_themselves_may_then_mint_from_the_hash(
    redis: redis_lib.Redis, folder_storage: Storage, tmp_path: Path
) -> None:
    # Given bytes uploaded by k1 and then, in full, by k2
    path = write(tmp_path / "a.png", b"shared pixels")
    assets.store_file(redis, folder_storage, path, content_type="image/png", file_path=None, owner="k1")
    theirs, created_new = assets.store_file(
        redis, folder_storage, path, content_type="image/png", file_path=None, owner="k2",
    )
    # When k2 mints from the hash
    minted = assets.from_hash(redis, theirs.hash, file_path=None, owner="k2")
    # Then it may, since uploading the bytes proved it holds them; the upload itself was a dedup hit
    assert minted is not None and minted.owner == "k2"
    assert not created_new


def test_an_asset_is_visible_only_to_its_owner(
    redis: redis_lib.Redis, folder_storage: Storage, tmp_path: Path
) -> None:
    # Given one asset of k1 and one without owner (a keyless gateway's)
    path = write(tmp_path / "a.png", b"mine")
    mine, _ = assets.store_file(redis, folder_storage, path, content_type="image/png", file_path=None, owner="k1")
    open_one, _ = assets.store_file(redis, folder_storage, path, content_type="image/png", file_path=None, owner="")
    # When each owner looks them up
    # Then each sees only its own: another owner's asset looks exactly like none
    assert assets.load_for(redis, mine.id, "k1") == mine
    assert assets.load_for(redis, mine.id, "k2") is None
    assert assets.load_for(redis, mine.id, "") is None
    assert assets.load_for(redis, open_one.id, "") == open_one
    assert assets.load_for(redis, open_one.id, "k1") is None


def test_a_stream_of_several_chunks_is_stored_with_its_blake3_and_leaves_no_temporary_file(
    redis: redis_lib.Redis, storage: Storage, tmp_path: Path
) -> None:
    # Given a non-seekable stream several chunks long
    data = body(MULTI_CHUNK_BYTES)
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    # When it is stored with the right declared hash
    record, created_new = assets.store_stream(
        redis, storage, GeneratorStream(body_chunks(MULTI_CHUNK_BYTES)), content_type="video/mp4",
        file_path="big.mp4", owner="", expected_hash="blake3:" + blake3(data).hexdigest(), spool_dir=spool_dir,
    )
    # Then the blob holds every byte, the record its size and hash, and the spool folder is empty
    assert created_new
    assert record.size_bytes == MULTI_CHUNK_BYTES
    assert record.hash == "blake3:" + blake3(data).hexdigest()
    assert storage.read_bytes(record.key, READ_CAP_BYTES) == data
    assert list(spool_dir.iterdir()) == []


def test_a_large_stream_is_stored_without_ever_holding_the_whole_body(
    redis: redis_lib.Redis, folder_storage: Storage, tmp_path: Path
) -> None:
    # Given a stream much larger than one chunk, made chunk by chunk
    stream = GeneratorStream(body_chunks(LARGE_BODY_BYTES))
    # When it is stored while memory allocations are traced
    tracemalloc.start()
    try:
        record, _ = assets.store_stream(
            redis, folder_storage, stream, content_type="video/mp4", file_path=None, owner="", spool_dir=tmp_path,
        )
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Then it is stored whole, while memory peaked at a few chunks, far below the body's size
    assert record.size_bytes == LARGE_BODY_BYTES
    assert peak_bytes < STREAM_PEAK_LIMIT_BYTES


def test_a_stream_over_the_size_cap_raises_too_large_and_leaves_no_blob_record_or_temporary_file(
    redis: redis_lib.Redis, storage: Storage, tmp_path: Path
) -> None:
    # Given a stream one byte over the cap
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    data = body(MULTI_CHUNK_BYTES)
    # When it is stored
    with pytest.raises(DanceError) as caught:
        assets.store_stream(
            redis, storage, GeneratorStream(body_chunks(MULTI_CHUNK_BYTES)), content_type="video/mp4",
            file_path=None, owner="", max_bytes=MULTI_CHUNK_BYTES - 1, spool_dir=spool_dir,
        )
    # Then it is refused with asset.too_large, and neither storage, Redis nor the spool folder keeps anything
    assert caught.value.code == "asset.too_large"
    assert not storage.exists(assets.blob_key(blake3(data).hexdigest()))
    assert asset_keys(redis) == []
    assert list(spool_dir.iterdir()) == []


def test_a_stream_whose_declared_hash_differs_raises_hash_mismatch_and_leaves_nothing(
    redis: redis_lib.Redis, storage: Storage, tmp_path: Path
) -> None:
    # Given a stream and a declared hash of other bytes
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    data = b"the real bytes"
    # When it is stored
    with pytest.raises(DanceError) as caught:
        assets.store_stream(
            redis, storage, GeneratorStream(iter([data])), content_type="image/png", file_path=None, owner="",
            expected_hash="blake3:" + blake3(b"other bytes").hexdigest(), spool_dir=spool_dir,
        )
    # Then it is refused with asset.hash_mismatch naming the received hash, and nothing is kept
    assert caught.value.code == "asset.hash_mismatch"
    assert caught.value.details["received"] == "blake3:" + blake3(data).hexdigest()
    assert not storage.exists(assets.blob_key(blake3(data).hexdigest()))
    assert asset_keys(redis) == []
    assert list(spool_dir.iterdir()) == []


def test_a_blob_removed_from_storage_is_uploaded_again_although_its_index_remains(
    redis: redis_lib.Redis, folder_storage: Storage, tmp_path: Path
) -> None:
    # Given an asset whose blob was deleted from the folder by hand, its index still in Redis
    path = write(tmp_path / "a.png", b"gone")
    record, _ = assets.store_file(redis, folder_storage, path, content_type="image/png", file_path=None, owner="")
    (tmp_path / "store" / record.key).unlink()
    # When the same bytes are stored again
    again, created_new = assets.store_file(
        redis, folder_storage, path, content_type="image/png", file_path=None, owner="",
    )
    # Then the blob is written anew rather than a record minted over nothing
    assert created_new
    assert folder_storage.read_bytes(again.key, READ_CAP_BYTES) == b"gone"


def ref(asset_id: object) -> dict[str, object]:
    return {"__type": "core/ASSET", "info": {"id": asset_id, "file_path": "x.png"}}


def test_refs_in_names_every_asset_reference_with_its_node_and_input() -> None:
    # Given a graph with two references and ordinary inputs
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": ref(first), "upload": "image"}},
        "2": {"class_type": "LoadVideo", "inputs": {"file": ref(second), "frames": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "out"}},
    }
    # When its references are listed
    found = assets.refs_in(workflow)
    # Then each is named with its node and input, and plain values are not references
    assert found == [("1", "image", first), ("2", "file", second)]
    assert assets.asset_ref_id("photo.png") is None
    assert assets.asset_ref_id({"__type": "other", "info": {"id": first}}) is None


@pytest.mark.parametrize(
    "value",
    [
        {"__type": "core/ASSET"},
        {"__type": "core/ASSET", "info": "not an object"},
        {"__type": "core/ASSET", "info": {"hash": "blake3:" + "0" * 64}},
        ref(42),
        ref("not-a-uuid"),
        ref(""),
        [ref(str(uuid.uuid4()))],
        {"nested": ref(str(uuid.uuid4()))},
    ],
    ids=["no-info", "info-not-object", "no-id", "id-not-string", "id-not-uuid", "id-empty", "inside-list",
         "inside-object"],
)
def test_a_malformed_or_buried_asset_reference_raises_asset_missing(value: object) -> None:
    # Given a graph whose input holds a malformed or buried reference
    workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": value}}}
    # When its references are listed, Then it is refused with asset.missing, a permanent error
    with pytest.raises(DanceError) as caught:
        assets.refs_in(workflow)
    assert caught.value.code == "asset.missing"
    assert not caught.value.retryable


def test_check_refs_names_every_reference_the_owner_may_not_use(
    redis: redis_lib.Redis, folder_storage: Storage, tmp_path: Path
) -> None:
    # Given an asset of k1, one of k2 and an id that names nothing
    path = write(tmp_path / "a.png", b"pixels")
    mine, _ = assets.store_file(redis, folder_storage, path, content_type="image/png", file_path=None, owner="k1")
    theirs, _ = assets.store_file(redis, folder_storage, path, content_type="image/png", file_path=None, owner="k2")
    nothing = str(uuid.uuid4())
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": ref(mine.id)}},
        "2": {"class_type": "LoadImage", "inputs": {"image": ref(theirs.id)}},
        "3": {"class_type": "LoadImage", "inputs": {"image": ref(nothing)}},
    }
    # When k1 checks the graph, Then both foreign ids are named in one asset.missing
    with pytest.raises(DanceError) as caught:
        assets.check_refs(redis, workflow, owner="k1")
    assert caught.value.code == "asset.missing"
    assert caught.value.details["asset_ids"] == [theirs.id, nothing]
    # And a graph of k1's own asset passes, giving its record
    assert assets.check_refs(redis, {"1": workflow["1"]}, owner="k1") == {mine.id: mine}

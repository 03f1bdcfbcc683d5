"""The sweep of blobs whose every asset expired, against real Redis and real storage (a folder and SeaweedFS
S3): what it frees, what it keeps, and its races with an upload of the same bytes, driven step by step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import cast

import pytest
import redis as redis_lib
from blake3 import blake3

from producer import asset_blobs, assets
from producer.asset_sweep import SweepReport, sweep
from producer.cli_support import EXIT_BROKER, EXIT_OK
from producer.errors import STORAGE_UNAVAILABLE, DanceError, error
from tests.support.processes import free_port, wait_until
from worker.storage import Storage
from worker.storage.base import StoredObject
from worker.storage.local import LocalStorage
from worker.storage.s3 import S3Storage

#: TTL of the records that these tests let expire, in seconds.
SHORT_TTL_S = 1
#: How long a test waits for keys to expire or a step of a race to happen, in seconds.
STEP_TIMEOUT_S = 30.0
#: Read cap for the stored blobs of these tests, in bytes.
READ_CAP_BYTES = 1 << 20
#: How long one `dance` command of these tests may take, in seconds.
CLI_TIMEOUT_S = 60.0


def pattern(total_bytes: int, seed: int = 0) -> bytes:
    block = bytes((seed + index) % 256 for index in range(251))
    return (block * (total_bytes // len(block) + 1))[:total_bytes]


def store(redis: redis_lib.Redis, storage: Storage, tmp_path: Path, data: bytes, *, ttl_s: int = assets.ASSET_TTL_S,
          owner: str = "alice") -> assets.AssetRecord:
    path = tmp_path / f"upload-{blake3(data).hexdigest()[:12]}-{ttl_s}.bin"
    path.write_bytes(data)
    record, _ = assets.store_file(redis, storage, path, content_type="image/png", file_path=None, owner=owner,
                                  ttl_s=ttl_s)
    return record


def blob_keys_gone(redis: redis_lib.Redis, hex_digest: str) -> bool:
    """Whether every Redis key over the blob expired: its index, owners and refs."""
    return not redis.exists(assets.blob_index_key(hex_digest), assets.blob_owners_key(hex_digest),
                            assets.blob_refs_key(hex_digest))


def expired_blob(redis: redis_lib.Redis, storage: Storage, tmp_path: Path, data: bytes) -> str:
    """Store ``data`` as two assets with a short TTL and wait until they and their blob's keys expired."""
    first = store(redis, storage, tmp_path, data, ttl_s=SHORT_TTL_S)
    second = store(redis, storage, tmp_path, data, ttl_s=SHORT_TTL_S, owner="bob")
    wait_until(lambda: not redis.exists(assets.record_key(first.id), assets.record_key(second.id))
               and blob_keys_gone(redis, first.hex_digest), STEP_TIMEOUT_S, "the assets to expire")
    return first.hex_digest


def listed(storage: Storage) -> dict[str, int]:
    return {item.key: item.size_bytes for item in storage.list_keys(assets.BLOB_FOLDER)}


def test_a_blob_whose_every_asset_expired_by_ttl_is_swept_and_its_bytes_leave_storage(
    redis: redis_lib.Redis, storage: Storage, tmp_path: Path
) -> None:
    # Given a blob whose two assets expired by their TTL, so that nothing in Redis names it any more
    data = pattern(7_000)
    hex_digest = expired_blob(redis, storage, tmp_path, data)
    assert storage.exists(assets.blob_key(hex_digest))
    # When the sweep runs
    report = sweep(redis, storage)
    # Then the blob left storage, the report counts it with its bytes, and no marker is left standing
    assert report == SweepReport(looked_at=1, swept=1, bytes_freed=len(data))
    assert not storage.exists(assets.blob_key(hex_digest))
    assert listed(storage) == {}
    assert not redis.exists(asset_blobs.blob_deleting_key(hex_digest))


def test_a_blob_with_one_live_asset_is_kept_while_an_expired_ones_blob_beside_it_is_swept(
    redis: redis_lib.Redis, storage: Storage, tmp_path: Path
) -> None:
    # Given a blob one of whose assets expired while a later one lives, and another blob that nothing names
    kept_data, swept_data = pattern(3_000, seed=1), pattern(5_000, seed=2)
    expiring = store(redis, storage, tmp_path, kept_data, ttl_s=SHORT_TTL_S)
    live = store(redis, storage, tmp_path, kept_data)
    swept_digest = expired_blob(redis, storage, tmp_path, swept_data)
    wait_until(lambda: not redis.exists(assets.record_key(expiring.id)), STEP_TIMEOUT_S, "the first asset to expire")
    # When the sweep runs
    report = sweep(redis, storage)
    # Then only the blob nothing names left storage; the live asset still reads its bytes
    assert report == SweepReport(looked_at=2, kept=1, swept=1, bytes_freed=len(swept_data))
    assert listed(storage) == {live.key: len(kept_data)}
    assert not storage.exists(assets.blob_key(swept_digest))
    assert storage.read_bytes(live.key, READ_CAP_BYTES) == kept_data
    assert assets.load(redis, live.id) == live


def test_a_short_lived_asset_stored_after_a_long_lived_one_does_not_cut_short_its_blobs_index(
    redis: redis_lib.Redis, storage: Storage, tmp_path: Path
) -> None:
    # Given a long-lived asset, and then an asset over the same bytes with a short TTL, which expires
    data = pattern(2_500, seed=3)
    live = store(redis, storage, tmp_path, data)
    expiring = store(redis, storage, tmp_path, data, ttl_s=SHORT_TTL_S)
    wait_until(lambda: not redis.exists(assets.record_key(expiring.id)), STEP_TIMEOUT_S, "the short asset to expire")
    # When the sweep runs
    report = sweep(redis, storage)
    # Then the blob's index still lives as long as the long-lived asset, and the blob is kept
    assert redis.ttl(assets.blob_index_key(live.hex_digest)) > assets.ASSET_TTL_S - 60
    assert (report.kept, report.swept) == (1, 0)
    assert storage.read_bytes(live.key, READ_CAP_BYTES) == data


def test_a_live_asset_in_the_refs_keeps_its_blob_even_when_the_blobs_index_is_gone(
    redis: redis_lib.Redis, storage: Storage, tmp_path: Path
) -> None:
    # Given a live asset whose blob's index was lost (deleted by hand), its refs still naming it
    data = pattern(1_800, seed=4)
    live = store(redis, storage, tmp_path, data)
    redis.delete(assets.blob_index_key(live.hex_digest))
    # When the sweep runs
    report = sweep(redis, storage)
    # Then the blob is kept: the refs' live record holds it
    assert report == SweepReport(looked_at=1, kept=1)
    assert storage.read_bytes(live.key, READ_CAP_BYTES) == data


def test_a_blob_that_a_delete_is_deleting_is_left_to_it(
    redis: redis_lib.Redis, storage: Storage, tmp_path: Path
) -> None:
    # Given an expired blob whose deleting marker another delete has set (it has yet to delete the blob)
    data = pattern(4_200, seed=5)
    hex_digest = expired_blob(redis, storage, tmp_path, data)
    redis.set(asset_blobs.blob_deleting_key(hex_digest), "another-delete", ex=asset_blobs.DELETING_TTL_S)
    # When the sweep runs
    report = sweep(redis, storage)
    # Then it skips the blob: neither the blob nor the other delete's marker is touched
    assert report == SweepReport(looked_at=1, busy=1)
    assert storage.exists(assets.blob_key(hex_digest))
    assert redis.get(asset_blobs.blob_deleting_key(hex_digest)) == b"another-delete"


def test_an_upload_of_the_same_bytes_after_the_sweeps_decision_waits_and_stores_its_blob_again(
    redis: redis_lib.Redis, storage: Storage, tmp_path: Path
) -> None:
    # Given an expired blob that the sweep's script has decided to sweep (marked) but not yet deleted
    data = pattern(6_000, seed=6)
    hex_digest = expired_blob(redis, storage, tmp_path, data)
    [(outcome, token)] = asset_blobs.sweep_decisions(redis, [hex_digest])
    assert outcome == asset_blobs.SWEEP
    # When an upload of the same bytes starts (storage still has them, so it puts nothing first)
    uploads: list[tuple[assets.AssetRecord, bool]] = []
    path = tmp_path / "again.bin"
    path.write_bytes(data)
    uploading = threading.Thread(target=lambda: uploads.append(assets.store_file(
        redis, storage, path, content_type="image/png", file_path=None, owner="carol")))
    uploading.start()
    wait_until(lambda: redis.scard(assets.blob_refs_key(hex_digest)) == 1, STEP_TIMEOUT_S, "the upload's record")
    # Then it registered its record but waits while the sweep's marker stands
    assert uploading.is_alive() and not uploads
    # And when the sweep finishes as it would (the blob leaves storage, then the marker goes)
    storage.delete(assets.blob_key(hex_digest))
    asset_blobs.release_deleting(redis, hex_digest, token)
    uploading.join(STEP_TIMEOUT_S)
    # Then the upload put the blob back: its asset's bytes are stored and read back whole
    assert uploads, "the upload did not finish"
    record, created_new = uploads[0]
    assert created_new is True
    assert storage.read_bytes(record.key, READ_CAP_BYTES) == data
    # and a later sweep keeps it
    assert sweep(redis, storage) == SweepReport(looked_at=1, kept=1)


class SweepsAfterPut:
    """The test's real storage, which runs one whole sweep right after an upload's first put: the instant
    between the upload putting its blob and registering its record. Every other call goes straight through."""

    def __init__(self, redis: redis_lib.Redis, inner: Storage) -> None:
        self._redis = redis
        self._inner = inner
        self.report: SweepReport | None = None

    def put_file(self, key: str, path: Path, content_type: str) -> StoredObject:
        stored = self._inner.put_file(key, path, content_type)
        if self.report is None:
            self.report = sweep(self._redis, self._inner)
        return stored

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def test_a_sweep_between_an_uploads_put_and_its_register_leaves_the_upload_its_blob(
    redis: redis_lib.Redis, storage: Storage, tmp_path: Path
) -> None:
    # Given an upload of new bytes, and a sweep that runs after its put and before its record is registered
    data = pattern(9_000, seed=7)
    racing = SweepsAfterPut(redis, storage)
    # When the upload runs
    record = store(redis, cast(Storage, racing), tmp_path, data)
    # Then the sweep found the blob with nothing naming it yet and swept it, and the upload, looking at
    # storage again after registering, put it back: its bytes are stored and read back whole
    assert racing.report == SweepReport(looked_at=1, swept=1, bytes_freed=len(data))
    assert storage.read_bytes(record.key, READ_CAP_BYTES) == data
    assert assets.load(redis, record.id) == record
    assert sweep(redis, storage) == SweepReport(looked_at=1, kept=1)


def test_the_sweep_decides_in_batches_and_frees_every_expired_blob_of_a_listing_longer_than_one(
    redis: redis_lib.Redis, storage: Storage, tmp_path: Path
) -> None:
    # Given five expired blobs and two live ones
    expired = [pattern(1_000 + index, seed=10 + index) for index in range(5)]
    for data in expired:
        store(redis, storage, tmp_path, data, ttl_s=SHORT_TTL_S)
    live = [store(redis, storage, tmp_path, pattern(2_000 + index, seed=20 + index)) for index in range(2)]
    digests = [blake3(data).hexdigest() for data in expired]
    wait_until(lambda: all(blob_keys_gone(redis, digest) for digest in digests), STEP_TIMEOUT_S, "the assets to expire")
    # When the sweep runs two blobs a batch
    report = sweep(redis, storage, batch_blobs=2)
    # Then every expired blob went and every live one stayed
    assert report == SweepReport(looked_at=7, kept=2, swept=5, bytes_freed=sum(len(data) for data in expired))
    assert set(listed(storage)) == {record.key for record in live}


def dance(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "producer.cli", *args], capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, check=False, env={**os.environ, **env})


def storage_url(storage: Storage) -> str:
    if isinstance(storage, LocalStorage):
        return storage.root.as_uri()
    assert isinstance(storage, S3Storage)
    return f"s3://{storage.bucket}/{storage.prefix}"


def test_dance_assets_sweep_prints_its_report_as_json_and_exits_zero(
    redis: redis_lib.Redis, redis_db: str, storage: Storage, tmp_path: Path
) -> None:
    # Given one expired blob and one live one, in the storage and broker the gateway's variables name
    swept_data = pattern(3_300, seed=30)
    swept_digest = expired_blob(redis, storage, tmp_path, swept_data)
    live = store(redis, storage, tmp_path, pattern(1_100, seed=31))
    env = {"CELERY_BROKER_URL": redis_db, "DANCE_STORAGE_URL": storage_url(storage)}
    # When an operator runs `dance assets sweep --json`
    done = dance("assets", "sweep", "--json", env=env)
    # Then it exits 0 and prints the report, and only the expired blob left storage
    assert done.returncode == EXIT_OK, done.stderr
    assert json.loads(done.stdout) == {"looked_at": 2, "kept": 1, "busy": 0, "swept": 1, "deferred": 0,
                                       "bytes_freed": len(swept_data)}
    assert not storage.exists(assets.blob_key(swept_digest))
    assert set(listed(storage)) == {live.key}


def test_dance_assets_sweep_without_json_prints_one_line_a_person_reads(
    redis: redis_lib.Redis, redis_db: str, folder_storage: Storage, tmp_path: Path
) -> None:
    # Given one expired blob, When the sweep runs without --json
    data = pattern(2_000, seed=32)
    expired_blob(redis, folder_storage, tmp_path, data)
    env = {"CELERY_BROKER_URL": redis_db, "DANCE_STORAGE_URL": storage_url(folder_storage)}
    done = dance("assets", "sweep", env=env)
    # Then it exits 0 with the counts in words
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout.strip() == (f"looked at 1 blobs: 0 kept, 1 swept ({len(data)} bytes freed), "
                                   "0 being deleted elsewhere, 0 left for the next sweep")


def test_dance_assets_sweep_with_the_broker_down_exits_with_the_broker_code_and_deletes_nothing(
    folder_storage: Storage,
) -> None:
    # Given a blob in storage and a broker URL where nothing listens
    folder_storage.put_bytes(assets.blob_key("ab" * 32), b"orphan?", "application/octet-stream")
    env = {"CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0", "DANCE_STORAGE_URL": storage_url(folder_storage)}
    # When the sweep runs
    done = dance("assets", "sweep", "--json", env=env)
    # Then it exits with the broker's exit code and the error's code, and the blob stays: nothing decided it
    assert done.returncode == EXIT_BROKER, done.stderr
    assert json.loads(done.stdout)["error"]["code"] == "broker.unreachable"
    assert folder_storage.exists(assets.blob_key("ab" * 32))


class FailsToDelete:
    """The test's real storage, whose deletes fail as an S3 outage would; every other call goes through."""

    def __init__(self, inner: Storage) -> None:
        self._inner = inner

    def delete(self, key: str) -> None:
        raise error(STORAGE_UNAVAILABLE, "storage is down for this test", key=key)

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def test_a_storage_that_fails_to_delete_fails_the_sweep_and_leaves_no_marker_for_the_next_one(
    redis: redis_lib.Redis, storage: Storage, tmp_path: Path
) -> None:
    # Given an expired blob, and a storage whose deletes fail
    data = pattern(2_200, seed=40)
    hex_digest = expired_blob(redis, storage, tmp_path, data)
    # When the sweep runs
    with pytest.raises(DanceError) as failed:
        sweep(redis, cast(Storage, FailsToDelete(storage)))
    # Then it raises the storage's error, the blob is still stored and its marker is released
    assert failed.value.code == "storage.unavailable"
    assert storage.exists(assets.blob_key(hex_digest))
    assert not redis.exists(asset_blobs.blob_deleting_key(hex_digest))
    # and the next sweep, storage healed, frees it
    assert sweep(redis, storage) == SweepReport(looked_at=1, swept=1, bytes_freed=len(data))


def test_blobs_a_batch_has_no_time_left_to_delete_are_deferred_with_their_markers_released(
    redis: redis_lib.Redis, folder_storage: Storage, tmp_path: Path
) -> None:
    # Given two expired blobs
    digests = [expired_blob(redis, folder_storage, tmp_path, pattern(1_500, seed=seed)) for seed in (41, 42)]
    # When a sweep runs whose batch may delete for no time at all after its decision
    report = sweep(redis, folder_storage, marker_budget_s=0.0)
    # Then both blobs were found unheld but deferred: still stored, no marker left standing
    assert report == SweepReport(looked_at=2, deferred=2)
    for digest in digests:
        assert folder_storage.exists(assets.blob_key(digest))
        assert not redis.exists(asset_blobs.blob_deleting_key(digest))


def test_a_sweep_asked_to_stop_stops_before_its_next_delete_and_leaves_no_marker(
    redis: redis_lib.Redis, folder_storage: Storage, tmp_path: Path
) -> None:
    # Given three expired blobs, and a sweep that is asked to stop once it has deleted one
    digests = [expired_blob(redis, folder_storage, tmp_path, pattern(1_200, seed=seed)) for seed in (50, 51, 52)]
    answers = iter([False, False])  # go on: before the batch, before the first delete; then stop
    # When the sweep runs
    report = sweep(redis, folder_storage, should_stop=lambda: next(answers, True))
    # Then one blob went, the other two stay deferred with their markers released
    assert report == SweepReport(looked_at=3, swept=1, deferred=2, bytes_freed=1_200)
    assert len([digest for digest in digests if folder_storage.exists(assets.blob_key(digest))]) == 2
    assert not any(redis.exists(asset_blobs.blob_deleting_key(digest)) for digest in digests)

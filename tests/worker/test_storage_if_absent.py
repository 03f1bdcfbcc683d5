"""Writes only-if-absent (the fenced manifest write), in a local folder and in real SeaweedFS S3."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from harness.seaweed import S3Server
from producer.errors import DanceError
from tests.fixtures.asset_storage import storage_of
from worker.storage import LocalStorage, Storage, StoredObject, open_storage

#: Read cap for the small objects of these tests, in bytes.
READ_CAP_BYTES = 1 << 20
#: Threads racing for one key.
RACERS = 8
#: Keys raced for, one after another: one lucky round proves little.
RACE_ROUNDS = 5
#: How long a racing thread may take, in seconds.
RACE_JOIN_TIMEOUT_S = 30.0


@pytest.fixture(params=["folder", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    return storage_of(request, tmp_path, "fenced")


def race(storage: Storage, key: str) -> list[tuple[bytes, StoredObject | None]]:
    """RACERS threads write their own body to ``key`` at once; each body with what its write returned."""
    start = threading.Barrier(RACERS)
    results: list[tuple[bytes, StoredObject | None]] = []
    lock = threading.Lock()

    def write(body: bytes) -> None:
        start.wait(RACE_JOIN_TIMEOUT_S)
        stored = storage.put_bytes_if_absent(key, body, "application/json")
        with lock:
            results.append((body, stored))

    threads = [threading.Thread(target=write, args=(f'{{"run": {n}}}'.encode(),)) for n in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(RACE_JOIN_TIMEOUT_S)
    return results


def test_the_first_manifest_write_wins_and_a_second_returns_none_leaving_the_first_bytes(storage: Storage) -> None:
    # Given a manifest written only-if-absent
    first = storage.put_bytes_if_absent("job-1/manifest.json", b'{"run": "first"}', "application/json")
    # When a second run writes its own manifest to the same key
    second = storage.put_bytes_if_absent("job-1/manifest.json", b'{"run": "second"}', "application/json")
    # Then the first write stored its bytes, the second got None, and the first's bytes stay
    assert first is not None and first.key == "job-1/manifest.json"
    assert first.sha256 == hashlib.sha256(b'{"run": "first"}').hexdigest() and first.bytes == 16
    assert second is None
    assert storage.read_bytes("job-1/manifest.json", READ_CAP_BYTES) == b'{"run": "first"}'


def test_an_only_if_absent_write_leaves_an_object_written_by_a_plain_put_alone(storage: Storage) -> None:
    # Given an object stored the ordinary way
    storage.put_bytes("job-2/manifest.json", b"plain", "application/json")
    # When it is written only-if-absent, Then nothing changes
    assert storage.put_bytes_if_absent("job-2/manifest.json", b"fenced", "application/json") is None
    assert storage.read_bytes("job-2/manifest.json", READ_CAP_BYTES) == b"plain"


def test_of_many_concurrent_writers_of_one_manifest_exactly_one_wins(storage: Storage) -> None:
    for round_ in range(RACE_ROUNDS):
        # Given RACERS threads, each with its own manifest for the same key
        key = f"race-{round_}/manifest.json"
        # When they all write it at once
        results = race(storage, key)
        # Then exactly one write stored something, and what is stored is that writer's body
        winners = [(body, stored) for body, stored in results if stored is not None]
        assert len(results) == RACERS and len(winners) == 1, results
        body, stored = winners[0]
        assert stored is not None and stored.sha256 == hashlib.sha256(body).hexdigest()
        assert storage.read_bytes(key, READ_CAP_BYTES) == body


def test_a_lost_local_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    # Given a local manifest
    local = open_storage((tmp_path / "store").as_uri())
    assert isinstance(local, LocalStorage)
    local.put_bytes_if_absent("job-3/manifest.json", b"first", "application/json")
    # When a second write loses, Then the folder holds the one manifest and nothing half-written
    assert local.put_bytes_if_absent("job-3/manifest.json", b"second", "application/json") is None
    assert [p.name for p in (local.root / "job-3").iterdir()] == ["manifest.json"]
    assert (local.root / "job-3" / "manifest.json").stat().st_mode & 0o777 == 0o644


def test_a_local_folder_that_cannot_hold_the_key_is_a_storage_error_not_a_lost_race(tmp_path: Path) -> None:
    # Given a file where the job's folder should be (mkdir then fails with "file exists")
    local = open_storage((tmp_path / "store").as_uri())
    local.put_bytes("job-4", b"a file, not a folder", "text/plain")
    # When a manifest is written below it, Then the failure is an error, not "someone else won"
    with pytest.raises(DanceError) as excinfo:
        local.put_bytes_if_absent("job-4/manifest.json", b"{}", "application/json")
    assert excinfo.value.code == "storage.unavailable"


def test_an_s3_refusal_of_an_only_if_absent_write_keeps_its_storage_code(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the right key id with the wrong secret
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    storage = open_storage(f"s3://{s3_env.bucket}/fenced-wrong-creds")
    # When a manifest is written only-if-absent, Then it is refused permanently, never taken for a lost race
    with pytest.raises(DanceError) as excinfo:
        storage.put_bytes_if_absent("job-5/manifest.json", b"{}", "application/json")
    assert excinfo.value.code == "storage.forbidden" and not excinfo.value.retryable

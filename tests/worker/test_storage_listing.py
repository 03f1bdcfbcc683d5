"""``list_keys`` on both storages (a folder and real SeaweedFS S3): every object under a folder, at any
depth, with its size, streamed; and on a folder, nothing that is not a finished stored object."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.asset_storage import storage_of
from worker.storage import Storage
from worker.storage.local import LocalStorage


@pytest.fixture(params=["folder", "s3"])
def listed_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """A folder, or a prefix of its own in the SeaweedFS bucket (the worker conftest's ``storage`` is a folder only)."""
    return storage_of(request, tmp_path, "listing")


def test_a_listing_names_every_object_under_the_folder_at_any_depth_with_its_size_and_nothing_beside_it(
    listed_storage: Storage,
) -> None:
    # Given objects under a folder, one in a sub-folder, and others beside it (a sibling whose name shares
    # the folder's as a prefix, and one at the root)
    listed_storage.put_bytes("assets/blake3/aa", b"a" * 10, "application/octet-stream")
    listed_storage.put_bytes("assets/blake3/bb", b"b" * 2_000, "application/octet-stream")
    listed_storage.put_bytes("assets/blake3/deeper/cc", b"c", "application/octet-stream")
    listed_storage.put_bytes("assets/blake3x/dd", b"d", "application/octet-stream")
    listed_storage.put_bytes("job-1/video.mp4", b"v", "video/mp4")
    # When the folder is listed
    listing = listed_storage.list_keys("assets/blake3")
    # Then the listing is a stream of keys relative to the storage root, with their sizes, and only those
    assert isinstance(listing, Iterator)
    assert {item.key: item.size_bytes for item in listing} == {
        "assets/blake3/aa": 10, "assets/blake3/bb": 2_000, "assets/blake3/deeper/cc": 1,
    }


def test_a_folder_with_no_objects_lists_nothing(listed_storage: Storage) -> None:
    # Given a storage with an object elsewhere only, When an empty folder is listed, Then nothing comes back
    listed_storage.put_bytes("job-1/manifest.json", b"{}", "application/json")
    assert list(listed_storage.list_keys("assets/blake3")) == []


def test_a_folder_listing_skips_writes_in_progress_and_symlinks(storage: LocalStorage, tmp_path: Path) -> None:
    # Given a stored object, the temporary file of a write still in progress, and a symlink to a file
    # outside the root, all in the listed folder
    storage.put_bytes("assets/blake3/ee", b"stored", "application/octet-stream")
    folder = storage.root / "assets" / "blake3"
    (folder / ".ff.x1y2z3.part").write_bytes(b"half a blob")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not the storage's")
    os.symlink(outside, folder / "gg")
    # When the folder is listed
    keys = [item.key for item in storage.list_keys("assets/blake3")]
    # Then only the finished stored object is named
    assert keys == ["assets/blake3/ee"]

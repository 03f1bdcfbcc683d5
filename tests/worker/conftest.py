"""Fixtures the input-fetching tests share: a local result store and a job's download folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.storage import LocalStorage, open_storage


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    local = open_storage((tmp_path / "store").as_uri())
    assert isinstance(local, LocalStorage)
    return local


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "job"

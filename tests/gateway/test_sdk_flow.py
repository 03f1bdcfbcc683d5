"""The official comfy-sdk against a real ``dance gateway``, real Redis and real S3 (SeaweedFS): assets that
one key cannot see of another's. The SDK's run of a workflow, its cancel and its typed errors are
tests/gateway/test_sdk_proof.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from comfy_sdk import Comfy
from comfy_sdk.exceptions import NotFound
from PIL import Image

from harness.seaweed import S3Server
from tests.fixtures.workers import Cluster
from tests.gateway.conftest import ALICE_KEY, BOB_KEY, StartGateway

#: The colour of the uploaded image.
COLOUR = (200, 30, 90)


@pytest.fixture
def cluster(redis_db: str, tmp_path: Path, s3_env: S3Server) -> Iterator[Cluster]:
    """The suite's cluster, with its storage in S3: workers and gateways inherit the S3 environment."""
    cluster = Cluster(broker_url=redis_db, root=tmp_path, storage_url=f"s3://{s3_env.bucket}/sdk-{uuid.uuid4().hex[:8]}")
    yield cluster
    for process in cluster.workers:
        process.stop(timeout_s=15)


def image_file(folder: Path) -> Path:
    path = folder / "photo.png"
    Image.new("RGB", (16, 12), COLOUR).save(path)
    return path


@pytest.fixture
def sdk_for(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Factory: an SDK client of the gateway at ``url`` with ``key``; all are closed at the end."""
    clients: list[Comfy] = []

    def factory(url: str, key: str) -> Comfy:
        monkeypatch.setenv("COMFY_BASE_URL", url)
        client = Comfy(api_key=key)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


def test_an_asset_one_key_uploaded_is_not_found_by_another_which_may_still_upload_the_same_bytes(
    cluster: Cluster, tmp_path: Path, start_gateway: StartGateway, sdk_for: Any
) -> None:
    # Given an image alice uploaded through the gateway
    url = start_gateway().url
    alice, bob = sdk_for(url, ALICE_KEY), sdk_for(url, BOB_KEY)
    photo = image_file(tmp_path)
    alices = alice.assets.from_file(photo)
    asset_id = alices.commit()
    # When bob asks for it by id, then commits the same bytes himself
    with pytest.raises(NotFound):
        bob.assets.get(asset_id)
    bobs = bob.assets.from_file(photo)
    bobs_id = bobs.commit()
    # Then his is an asset of his own over the one stored blob, which alice cannot see either
    assert bobs_id != asset_id and bobs.created_new is False and bobs.hash == alices.hash
    with pytest.raises(NotFound):
        alice.assets.get(bobs_id)
    assert alice.assets.get(asset_id).id == asset_id

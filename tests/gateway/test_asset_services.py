"""The asset routes built from the environment, as ``make_app`` builds them: the broker's Redis and the
storage that DANCE_STORAGE_URL names, with the upload cap of DANCE_GATEWAY_MAX_ASSET_BYTES."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis as redis_lib
from aiohttp import web

from gateway.asset_routes import AssetServices, add_asset_routes
from producer import assets
from producer.errors import DanceError
from tests.gateway.asset_app import ServedAssets

#: Upload cap the environment sets, in bytes.
ENV_MAX_ASSET_BYTES = 1000
#: Timeout of one HTTP call in these tests, in seconds.
HTTP_TIMEOUT_S = 30.0


@pytest.fixture
def env_gateway(redis_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServedAssets]:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    monkeypatch.setenv("CELERY_BROKER_URL", redis_db)
    monkeypatch.setenv("DANCE_STORAGE_URL", (tmp_path / "store").as_uri())
    monkeypatch.setenv("DANCE_GATEWAY_MAX_ASSET_BYTES", str(ENV_MAX_ASSET_BYTES))
    monkeypatch.setenv("DANCE_GATEWAY_SPOOL_DIR", str(spool_dir))
    app = web.Application()
    add_asset_routes(app)
    served = ServedAssets(app, spool_dir=spool_dir).start()
    try:
        yield served
    finally:
        served.stop()


def post(base_url: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{base_url}/api/v2/assets", files={"file": ("a.bin", data, "application/octet-stream")},
                      timeout=HTTP_TIMEOUT_S)


def test_routes_added_without_services_use_the_broker_redis_and_storage_the_environment_names(
    env_gateway: ServedAssets, redis_db: str, tmp_path: Path
) -> None:
    # Given the asset routes on an app that set no services, When bytes are uploaded
    response = post(env_gateway.base_url, b"from the environment")
    # Then the record is in the broker's Redis and the blob in the storage folder
    assert response.status_code == 201, response.text
    client = redis_lib.Redis.from_url(redis_db)
    try:
        record = assets.load(client, response.json()["id"])
    finally:
        client.close()
    assert record is not None
    assert (tmp_path / "store" / record.key).read_bytes() == b"from the environment"


def test_the_environments_upload_cap_is_enforced(env_gateway: ServedAssets) -> None:
    # Given a cap of ENV_MAX_ASSET_BYTES, When one byte more is uploaded, Then it is refused with 413
    response = post(env_gateway.base_url, b"x" * (ENV_MAX_ASSET_BYTES + 1))
    assert response.status_code == 413
    assert response.json()["error"]["details"]["max_bytes"] == ENV_MAX_ASSET_BYTES
    assert list(env_gateway.spool_dir.iterdir()) == []


def test_an_upload_cap_below_one_byte_is_a_configuration_error(tmp_path: Path) -> None:
    # Given a cap of 0, When the services are built, Then it is config.invalid naming the variable
    env = {"DANCE_STORAGE_URL": tmp_path.as_uri(), "DANCE_GATEWAY_MAX_ASSET_BYTES": "0"}
    with pytest.raises(DanceError) as caught:
        AssetServices.from_env(env)
    assert (caught.value.code, caught.value.details["variable"]) == ("config.invalid", "DANCE_GATEWAY_MAX_ASSET_BYTES")

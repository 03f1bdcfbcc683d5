"""A real ``dance gateway`` with ``DANCE_GATEWAY_SWEEP_INTERVAL_S=1`` sweeps the blobs whose every asset
expired, in the background and under the sweep lock, which it takes and releases and which makes it wait
while another holder has it."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
import redis as redis_lib

from gateway.asset_routes import AssetServices
from gateway.asset_sweeper import SWEEP_LOCK_KEY, sweep_if_free
from gateway.settings import GatewaySettings
from harness.seaweed import S3Server
from producer import assets
from producer.errors import DanceError
from tests.fixtures.workers import Cluster
from tests.gateway.conftest import StartGateway
from tests.support.processes import wait_until
from worker.storage import Storage, open_storage

#: TTL of the assets these tests let expire, in seconds.
SHORT_TTL_S = 1
#: How long a test waits for an expiry or for a sweep of the gateway, in seconds (its interval is 1 s).
SWEEP_TIMEOUT_S = 30.0
#: The gateway's log line when another holder has the sweep lock.
SKIPPED_LINE = "asset sweep skipped: another gateway holds"


def expired_asset(broker: redis_lib.Redis, storage: Storage, tmp_path: Path, data: bytes) -> str:
    """Store ``data`` as an asset with a short TTL; its blob's key once the asset and its blob's keys expired."""
    path = tmp_path / "expiring.bin"
    path.write_bytes(data)
    record, _ = assets.store_file(broker, storage, path, content_type="image/png", file_path=None, owner="alice",
                                  ttl_s=SHORT_TTL_S)
    wait_until(lambda: not broker.exists(assets.record_key(record.id), assets.blob_index_key(record.hex_digest),
                                         assets.blob_refs_key(record.hex_digest)), SWEEP_TIMEOUT_S,
               "the asset to expire")
    return record.key


def test_a_gateway_with_a_one_second_interval_sweeps_a_blob_whose_asset_expired(
    cluster: Cluster, start_gateway: StartGateway, tmp_path: Path
) -> None:
    # Given a gateway that sweeps every second, and a blob whose only asset expired
    broker = redis_lib.Redis.from_url(cluster.broker_url)
    storage = open_storage(cluster.storage_url)
    gateway = start_gateway(DANCE_GATEWAY_SWEEP_INTERVAL_S="1")
    key = expired_asset(broker, storage, tmp_path, b"expired bytes" * 500)
    # When the gateway's next sweep runs
    wait_until(lambda: not storage.exists(key), SWEEP_TIMEOUT_S, "the gateway to sweep the blob")
    # Then the blob left storage, the gateway logged its report, and it released the sweep lock
    gateway.process.wait_for_log("'swept': 1, 'deferred': 0, 'bytes_freed': 6500}", SWEEP_TIMEOUT_S)
    wait_until(lambda: not broker.exists(SWEEP_LOCK_KEY), SWEEP_TIMEOUT_S, "the sweep lock to be released")
    assert gateway.call("GET", "/api/v2/health", key=None).status_code == 200
    broker.close()


def test_a_gateway_does_not_sweep_while_another_holds_the_lock_and_sweeps_once_it_is_free(
    cluster: Cluster, start_gateway: StartGateway, tmp_path: Path
) -> None:
    # Given the sweep lock held by another sweeper, a blob whose asset expired, and a gateway sweeping every second
    broker = redis_lib.Redis.from_url(cluster.broker_url)
    storage = open_storage(cluster.storage_url)
    assert broker.set(SWEEP_LOCK_KEY, "another-gateway", nx=True, ex=600)
    key = expired_asset(broker, storage, tmp_path, b"held back" * 700)
    gateway = start_gateway(DANCE_GATEWAY_SWEEP_INTERVAL_S="1")
    # When its sweep comes round
    gateway.process.wait_for_log(SKIPPED_LINE, SWEEP_TIMEOUT_S)
    # Then it swept nothing and left the other holder's lock alone
    assert storage.exists(key)
    assert broker.get(SWEEP_LOCK_KEY) == b"another-gateway"
    # And once the other holder releases the lock, the gateway sweeps the blob
    broker.delete(SWEEP_LOCK_KEY)
    wait_until(lambda: not storage.exists(key), SWEEP_TIMEOUT_S, "the gateway to sweep the blob")
    broker.close()


def test_a_sweep_under_the_lock_takes_it_and_releases_only_its_own_token(
    redis: redis_lib.Redis, folder_storage: Storage, tmp_path: Path
) -> None:
    # Given a storage whose listing, while it is read, finds the lock taken and then replaced by another
    # gateway's (as when a sweep outlives the lock's TTL)
    seen: list[bytes | None] = []

    class Watching:
        def __init__(self, inner: Storage) -> None:
            self._inner = inner

        def list_keys(self, prefix: str) -> object:
            seen.append(redis.get(SWEEP_LOCK_KEY))
            redis.set(SWEEP_LOCK_KEY, "the-next-gateway")
            return self._inner.list_keys(prefix)

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

    services = AssetServices(redis, cast(Storage, Watching(folder_storage)))
    # When a sweep runs under the lock
    report = sweep_if_free(services)
    # Then it held a lock of its own while it swept, and on the way out left the other gateway's in place
    assert report is not None and report.looked_at == 0
    assert seen[0] is not None and seen[0] != b"the-next-gateway"
    assert redis.get(SWEEP_LOCK_KEY) == b"the-next-gateway"
    # and a second sweep, the lock now held by another, does nothing
    assert sweep_if_free(services) is None


def test_the_sweep_interval_defaults_to_an_hour_may_be_turned_off_and_is_never_negative() -> None:
    # Given the gateway's settings from environments that leave the interval alone, turn it off or make it negative
    default = GatewaySettings.from_env({})
    off = GatewaySettings.from_env({"DANCE_GATEWAY_SWEEP_INTERVAL_S": "0"})
    # Then the default is an hour and 0 is off, while a negative interval is refused as a setting
    assert (default.sweep_interval_s, off.sweep_interval_s) == (3600.0, 0.0)
    with pytest.raises(DanceError) as refused:
        GatewaySettings.from_env({"DANCE_GATEWAY_SWEEP_INTERVAL_S": "-5"})
    assert refused.value.code == "config.invalid"
    assert refused.value.details["variable"] == "DANCE_GATEWAY_SWEEP_INTERVAL_S"


def test_a_gateway_whose_sweep_fails_logs_the_code_keeps_serving_and_tries_again(
    start_gateway: StartGateway, s3_env: S3Server
) -> None:
    # Given a gateway sweeping every second over an S3 bucket that does not exist
    gateway = start_gateway(DANCE_GATEWAY_SWEEP_INTERVAL_S="1", DANCE_STORAGE_URL="s3://no-such-bucket-here/assets")
    # When its sweeps run, Then each failure is logged with the storage error's code, twice over (it tries again)
    wait_until(lambda: gateway.process.log().count("asset sweep failed (storage.") >= 2, SWEEP_TIMEOUT_S,
               "two failed sweeps to be logged")
    # and the gateway still answers
    assert gateway.call("GET", "/api/v2/health", key=None).status_code == 200
    assert gateway.process.poll() is None

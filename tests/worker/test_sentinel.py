"""A broker behind Redis Sentinel: workers, producers and the health check find the master through it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from harness.local import redis_service
from tests.fixtures.workers import Cluster
from tests.support.jobs import dance_request
from tests.support.processes import ManagedProcess, free_port, wait_until

MASTER = "dancemaster"


@pytest.fixture
def sentinel_url(tmp_path: Path) -> Iterator[str]:
    """A Redis master and one Sentinel that monitors it; yields the sentinel:// broker URL."""
    binary = shutil.which("redis-server") or "redis-server"
    master_port, sentinel_port = free_port(), free_port()
    master = redis_service("redis-master", master_port, tmp_path, tmp_path).start()
    config = tmp_path / "sentinel.conf"
    config.write_text(f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                      f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n")
    sentinel = ManagedProcess("redis-sentinel", [binary, str(config), "--sentinel"], tmp_path / "sentinel.log").start()
    probe = redis.Redis(port=sentinel_port)
    wait_until(lambda: _knows_master(probe), 20, "Sentinel to report the master")
    try:
        yield f"sentinel://127.0.0.1:{sentinel_port}/0"
    finally:
        sentinel.stop()
        master.stop()


def _knows_master(probe: redis.Redis) -> bool:
    try:
        return probe.execute_command("SENTINEL", "get-master-addr-by-name", MASTER) is not None
    except redis.ConnectionError:
        return False


def test_a_cluster_whose_broker_url_names_sentinel_runs_jobs_and_passes_its_health_check(
    sentinel_url: str, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a worker and a producer that know the broker only through Sentinel
    cluster = Cluster(broker_url=sentinel_url, root=tmp_path, storage_url=(tmp_path / "storage").as_uri(),
                      sentinel_master=MASTER)
    sim = comfysim(exec_s=0.1)
    worker = cluster.start_worker("w", sim.url)
    try:
        # When a job is submitted, then it runs
        with cluster.client() as client:
            assert client.submit(dance_request(media_server, tmp_path)).result(timeout_s=60)["status"] == "succeeded"
        # and the worker's liveness record, found through Sentinel, says it is healthy
        env = {**os.environ, "CELERY_BROKER_URL": sentinel_url, "DANCE_SENTINEL_MASTER": MASTER,
               "DANCE_WORKER_NAME": "w@%h"}
        wait_until(lambda: subprocess.run([sys.executable, "-m", "producer.cli", "check"], env=env, check=False,
                                          capture_output=True).returncode == 0, 30, "dance check to pass")
    finally:
        worker.stop()


def test_a_sentinel_url_without_the_master_name_is_refused_with_a_code() -> None:
    from producer import errors
    from producer.redisurl import redis_client

    with pytest.raises(errors.ConfigInvalid) as raised:
        redis_client("sentinel://127.0.0.1:26379/0")
    assert raised.value.code == errors.CONFIG_INVALID and "DANCE_SENTINEL_MASTER" in raised.value.message

"""Security: no pickle, a password-protected broker, and no secret in logs, results or errors."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection

from harness.local import answers_ping
from producer import errors
from tests.fixtures.workers import Cluster
from tests.support.jobs import dance_request, queued_messages, unacked_messages
from tests.support.processes import ManagedProcess, free_port, wait_until

SECRET = "s3cr3t-Pa55"


@pytest.fixture
def password_redis(tmp_path: Path) -> Any:
    port = free_port()
    process = ManagedProcess(
        "redis-auth", [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                       "--requirepass", SECRET, "--save", "", "--dir", str(tmp_path)], tmp_path / "redis.log",
    ).start()
    client = redis.Redis(port=port, password=SECRET)
    wait_until(lambda: answers_ping(client), 15, "redis with a password")
    yield f"redis://:{SECRET}@127.0.0.1:{port}/0"
    process.stop()


def test_a_password_protected_broker_works_and_the_password_is_never_logged_or_returned(
    password_redis: str, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a broker that requires a password, and a media URL with a signed query string
    cluster = Cluster(broker_url=password_redis, root=tmp_path, storage_url=(tmp_path / "storage").as_uri())
    sim = comfysim(exec_s=0.1)
    worker = cluster.start_worker("w", sim.url)
    request = dance_request(media_server, tmp_path)
    request["reference_image"] += "?X-Amz-Signature=topsecret&X-Amz-Credential=AKIAEXAMPLE"
    try:
        with cluster.client() as client:
            result = client.submit(request).result(timeout_s=60)
            # Then the job ran, and neither the password nor the signature shows in the result
            assert result["status"] == "succeeded"
            text = str(result)
            assert SECRET not in text and "topsecret" not in text and "AKIAEXAMPLE" not in text
            # and a failing job's error does not echo them either
            bad = {**request, "dance_video": media_server.serve("/gone", b"", status=404) + "?token=topsecret"}
            with pytest.raises(errors.DanceError) as raised:
                client.submit(bad).result(timeout_s=60)
            assert "topsecret" not in str(raised.value.as_dict())
    finally:
        worker.stop()
    # and the worker's log holds no secret
    log = worker.log()
    assert SECRET not in log and "topsecret" not in log


def test_a_pickled_message_is_refused_and_never_runs(cluster: Cluster, comfysim: Any, tmp_path: Path) -> None:
    # Given a ready worker
    sim = comfysim(exec_s=0.1)
    worker = cluster.start_worker("w", sim.url)
    worker.wait_for_log(" ready.")
    # When someone publishes a pickle-serialised task message to its queue
    with Connection(cluster.broker_url) as connection:
        producer = connection.Producer(serializer="pickle")
        producer.publish(
            {"task": "dance.generate", "id": "pickled", "args": [], "kwargs": {"request": {}}},
            routing_key="dance", exchange="", serializer="pickle",
            headers={"task": "dance.generate", "id": "pickled", "lang": "py"},
        )
    # Then the worker refuses the content type and nothing reaches ComfyUI
    worker.wait_for_log("ContentDisallowed")
    assert sim.state()["prompts_received"] == 0
    wait_until(lambda: queued_messages(cluster.broker_url) == 0 and unacked_messages(cluster.broker_url) == 0, 10,
               "the refused message to be dropped")


@pytest.fixture
def tls_redis(tmp_path: Path) -> Any:
    """A redis-server that speaks TLS only, with a certificate from a throwaway CA."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    port = free_port()
    process = ManagedProcess(
        "redis-tls", [shutil.which("redis-server") or "redis-server", "--port", "0", "--tls-port", str(port),
                      "--bind", "127.0.0.1", "--tls-cert-file", str(tmp_path / "server.pem"),
                      "--tls-key-file", str(tmp_path / "server.pem"), "--tls-ca-cert-file", str(tmp_path / "ca.pem"),
                      "--tls-auth-clients", "no", "--save", "", "--dir", str(tmp_path)], tmp_path / "redis.log",
    ).start()
    url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={tmp_path / 'ca.pem'}"
    client = redis.Redis.from_url(url)
    wait_until(lambda: answers_ping(client), 15, "redis over TLS")
    yield url
    process.stop()


def test_a_tls_broker_url_works_end_to_end(tls_redis: str, comfysim: Any, media_server: Any, tmp_path: Path) -> None:
    # Given a broker reachable only over TLS, with a certificate the clients verify
    cluster = Cluster(broker_url=tls_redis, root=tmp_path, storage_url=(tmp_path / "storage").as_uri())
    sim = comfysim(exec_s=0.1)
    worker = cluster.start_worker("w", sim.url)
    try:
        # When a job goes through it, then it succeeds
        with cluster.client() as client:
            assert client.submit(dance_request(media_server, tmp_path)).result(timeout_s=60)["status"] == "succeeded"
    finally:
        worker.stop()

"""Kills, restarts and shutdowns lose no job and run none twice (real workers, Redis and simulators)."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import redis

from harness.local import redis_service, wait_for_redis
from producer import keys
from producer.errors import DanceError
from tests.fixtures.workers import Cluster
from tests.support.jobs import dance_request, job_counter, queued_messages, unacked_messages
from tests.support.processes import free_port, wait_until

#: A short visibility timeout, so that redelivery after a death happens within the test's patience.
FAST_REDELIVERY = {"DANCE_VISIBILITY_TIMEOUT_S": "6"}


def test_comfyui_killed_mid_job_requeues_the_job_which_completes_once_comfyui_is_back(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a job running on a worker whose ComfyUI holds it mid-sampler
    sim = comfysim(exec_s=0.2)
    sim.faults({"hold": True})
    worker = cluster.start_worker("w", sim.url, COMFYUI_READY_LOG_INTERVAL_S="1")
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path), job_id="comfy-dies")
        wait_until(lambda: sim.state()["held"], 30, "the prompt to be held")
        # When ComfyUI is killed -9
        sim.process.kill()
        # Then the job goes back to the queue, not failed, its attempt counted
        wait_until(lambda: handle.status() == "REQUEUED", 20, "the job to be requeued")
        assert handle.progress() is None and job_counter(cluster.broker_url, keys.attempts("comfy-dies")) == 1
        worker.wait_for_log("handing the job back to the queue")
        wait_until(lambda: queued_messages(cluster.broker_url) == 1, 10, "the message back in its queue")
        # and the worker takes nothing while ComfyUI is down: after it reported waiting, the job is still queued
        worker.wait_for_log("waiting for ComfyUI for")
        assert queued_messages(cluster.broker_url) == 1 and unacked_messages(cluster.broker_url) == 0
        # When ComfyUI comes back on the same port
        comfysim(port=sim.port, data_dir=sim.data_dir, exec_s=0.2)
        # Then the job completes, on its second attempt
        result = handle.result(timeout_s=60)
    assert result["status"] == "succeeded"
    assert job_counter(cluster.broker_url, keys.attempts("comfy-dies")) == 2
    assert worker.poll() is None
    # and the handback is one warning line with the code, not a traceback
    assert "reject requeue=True: [comfyui.unreachable]" in worker.log() and "Traceback" not in worker.log()


def test_a_job_of_a_worker_killed_mid_job_is_redelivered_and_completed_by_another(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given two workers, each with its own ComfyUI, and a job held on worker A's
    sim_a = comfysim(exec_s=0.2)
    sim_a.faults({"hold": True})
    worker_a = cluster.start_worker("a", sim_a.url, **FAST_REDELIVERY)
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path), job_id="worker-dies")
        wait_until(lambda: sim_a.state()["held"], 30, "the prompt to be held on A")
        sim_b = comfysim(exec_s=0.2)
        cluster.start_worker("b", sim_b.url, **FAST_REDELIVERY)
        # When A is SIGKILLed, as the OOM killer would
        worker_a.kill()
        # Then B gets the job once the visibility timeout passes and completes it
        result = handle.result(timeout_s=90)
    assert result["worker"]["hostname"].startswith("b@")
    assert job_counter(cluster.broker_url, keys.manifest_writes("worker-dies")) == 1
    assert job_counter(cluster.broker_url, keys.executions("worker-dies")) == 2  # one wasted GPU run, on A


@pytest.mark.parametrize("version", ["0.3.39", "0.12.3"])
def test_a_restarted_worker_clears_the_prompts_its_killed_predecessor_left_in_comfyui(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path, version: str
) -> None:
    # Given a worker whose ComfyUI (in a container of its own) holds one job in the sampler while the
    # worker's pipelining has queued the next job's prompt behind it, and another worker's prompt there too
    sim = comfysim(exec_s=0.2, version=version)
    sim.faults({"hold": True})
    worker = cluster.start_worker("w", sim.url, **FAST_REDELIVERY)
    with cluster.client() as client:
        first = client.submit(dance_request(media_server, tmp_path), job_id="orphan-1")
        wait_until(lambda: sim.state()["held"], 30, "the first prompt to be held")
        second = client.submit(dance_request(media_server, tmp_path), job_id="orphan-2")
        wait_until(lambda: len(sim.request("GET", "/queue")["queue_pending"]) == 1, 30, "the next prompt queued")
        foreign = {"prompt": dict(sim.request("GET", "/queue")["queue_pending"][0][2]), "client_id": "someone-else",
                   "extra_data": {"dance_job_id": "other", "dance_worker": "w2@elsewhere/0123456789ab"}}
        foreign_id = sim.request("POST", "/prompt", foreign)["prompt_id"]
        # When the worker is SIGKILLed and a new process starts under the same name
        worker.kill()
        restarted = cluster.start_worker("w", sim.url, **FAST_REDELIVERY)
        # Then before it takes work it deletes its predecessor's queued prompt and interrupts the running one,
        # and leaves the other worker's prompt alone
        restarted.wait_for_log("cleared the prompts an earlier run of w@")
        if version == "0.3.39":
            assert sim.state()["interrupts"] == 1  # a global interrupt, sent once it saw its orphan running
        wait_until(lambda: foreign_id in sim.state()["executed"], 30, "the other worker's prompt to run")
        assert sim.request("GET", f"/history/{foreign_id}")[foreign_id]["status"]["status_str"] == "success"
        # and both jobs still complete once the broker redelivers them
        assert first.result(timeout_s=90)["status"] == "succeeded"
        assert second.result(timeout_s=90)["status"] == "succeeded"


def test_a_job_longer_than_the_visibility_timeout_runs_once(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given two workers with a 6 s visibility timeout and a job held on A
    sim_a, sim_b = comfysim(exec_s=0.2), comfysim(exec_s=0.2)
    sim_a.faults({"hold": True})
    cluster.start_worker("a", sim_a.url, **FAST_REDELIVERY)
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path), job_id="long-job")
        wait_until(lambda: sim_a.state()["held"], 30, "the prompt to be held on A")
        worker_b = cluster.start_worker("b", sim_b.url, **FAST_REDELIVERY)
        worker_b.wait_for_log(" ready.")
        # When the job outlives three visibility timeouts (A keeps refreshing its lease)
        broker = redis.Redis.from_url(cluster.broker_url)
        refreshes = _score_changes(broker, count=8)
        assert refreshes >= 8
        sim_a.release()
        result = handle.result(timeout_s=60)
    # Then it ran once, on A; B never received it
    assert result["worker"]["hostname"].startswith("a@")
    assert job_counter(cluster.broker_url, keys.executions("long-job")) == 1
    assert sim_b.state()["prompts_received"] == 0 and "long-job" not in worker_b.log()


def _score_changes(broker: redis.Redis, count: int) -> int:
    """Wait until the held message's unacked_index score has been refreshed ``count`` times (every 1.5 s)."""
    seen: list[float] = []

    def refreshed() -> bool:
        entries = broker.zrange("unacked_index", 0, -1, withscores=True)
        if entries and (not seen or entries[0][1] != seen[-1]):
            seen.append(entries[0][1])
        return len(seen) > count

    wait_until(refreshed, 60, f"{count} lease refreshes")
    return len(seen) - 1


def test_a_redelivered_job_waits_while_another_run_holds_its_lease_and_returns_that_runs_manifest(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a job whose execution lease another (live) run holds
    broker = redis.Redis.from_url(cluster.broker_url)
    broker.set(keys.lease("leased"), "elsewhere@host:token", px=60_000)
    sim = comfysim(exec_s=0.2)
    worker = cluster.start_worker("w", sim.url)
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path), job_id="leased")
        # When the worker gets it, it watches the lease instead of running it on a second GPU
        worker.wait_for_log("job leased is held by elsewhere@host")
        assert sim.state()["prompts_received"] == 0
        # When the other run finishes and writes its manifest
        manifest = {"job_id": "leased", "status": "succeeded", "outputs": [], "by": "the other run"}
        storage = Path(cluster.storage_url.removeprefix("file://")) / "leased"
        storage.mkdir()
        (storage / "manifest.json").write_text(json.dumps(manifest))
        broker.delete(keys.lease("leased"))
        # Then the job returns that manifest without any GPU work
        assert handle.result(timeout_s=30)["by"] == "the other run"
    assert sim.state()["prompts_received"] == 0


def test_a_job_whose_lease_holder_died_is_taken_over(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a lease left by a run that died (it expires in 3 s and nobody renews it)
    redis.Redis.from_url(cluster.broker_url).set(keys.lease("orphan"), "dead@host:token", px=3_000)
    sim = comfysim(exec_s=0.2)
    cluster.start_worker("w", sim.url)
    with cluster.client() as client:
        result = client.submit(dance_request(media_server, tmp_path), job_id="orphan").result(timeout_s=60)
    assert result["status"] == "succeeded" and sim.state()["prompts_received"] == 1


def test_sigterm_lets_the_running_job_finish_within_the_drain_period(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    sim = comfysim(exec_s=0.2)
    sim.faults({"hold": True})
    worker = cluster.start_worker("w", sim.url, DANCE_DRAIN_S="60")
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path))
        staged = client.submit(dance_request(media_server, tmp_path))
        # (the worker stages the second job while the first runs: its prompt waits in ComfyUI)
        wait_until(lambda: sim.state()["held"] and sim.state()["prompts_received"] == 2, 30,
                   "one prompt held and the next staged")
        # When the worker is told to stop while its jobs are in flight
        worker.signal(signal.SIGTERM)
        worker.wait_for_log("draining")
        later = client.submit(dance_request(media_server, tmp_path))
        sim.release()
        # Then the jobs in flight finish, the worker exits cleanly, and a job sent afterwards stays queued
        assert handle.result(timeout_s=30)["status"] == "succeeded"
        assert staged.result(timeout_s=30)["status"] == "succeeded"
        assert worker.wait(timeout_s=30) == 0
        assert later.status() == "PENDING" and queued_messages(cluster.broker_url) == 1


def test_sigterm_hands_a_job_that_outlasts_the_drain_period_back_to_the_queue(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    sim = comfysim(exec_s=0.2)
    sim.faults({"hold": True})
    worker = cluster.start_worker("w", sim.url, DANCE_DRAIN_S="1")
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path), job_id="drained")
        wait_until(lambda: sim.state()["held"], 30, "the prompt to be held")
        # When the worker is told to stop and the job does not finish within the drain period
        worker.signal(signal.SIGTERM)
        # Then the worker interrupts its prompt, hands the job back and exits cleanly
        assert worker.wait(timeout_s=30) == 0
        assert sim.state()["interrupts"] == 1
        assert queued_messages(cluster.broker_url) == 1 and unacked_messages(cluster.broker_url) == 0
        assert handle.status() in ("PENDING", "REQUEUED", "STARTED", "PROGRESS")
        # and another worker completes it
        sim.faults({"hold": False})
        sim.release()
        cluster.start_worker("w2", sim.url)
        assert handle.result(timeout_s=60)["status"] == "succeeded"


def test_workers_reconnect_and_keep_consuming_after_a_redis_restart(
    comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a broker of its own, with AOF on as in compose, and a worker that ran a job
    broker = RestartableRedis(tmp_path / "redis").start()
    cluster = Cluster(broker_url=broker.url, root=tmp_path, storage_url=(tmp_path / "storage").as_uri())
    sim = comfysim(exec_s=0.2)
    worker = cluster.start_worker("w", sim.url)
    try:
        with cluster.client() as client:
            assert client.submit(dance_request(media_server, tmp_path)).result(timeout_s=60)["status"] == "succeeded"
            # and a job queued just before Redis goes down
            queued = client.submit(dance_request(media_server, tmp_path), job_id="survives-restart")
        # When Redis restarts
        sim.faults({"hold": True})
        broker.restart()
        # Then the worker reconnects, the queued job survived in the AOF and completes
        sim.release()
        sim.faults({"hold": False})
        with cluster.client() as client:
            assert client.job("survives-restart").result(timeout_s=90)["status"] == "succeeded"
            # and new jobs are still consumed
            assert client.submit(dance_request(media_server, tmp_path)).result(timeout_s=60)["status"] == "succeeded"
        assert "Connection to broker lost" in worker.log()
        assert queued.id == "survives-restart"
    finally:
        worker.stop()
        broker.stop()


def test_a_producer_waiting_for_a_result_rides_out_a_redis_restart(
    comfysim: Any, media_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a broker of its own with AOF, and a producer waiting for a job held in the sampler
    broker = RestartableRedis(tmp_path / "redis").start()
    cluster = Cluster(broker_url=broker.url, root=tmp_path, storage_url=(tmp_path / "storage").as_uri())
    sim = comfysim(exec_s=0.2)
    sim.faults({"hold": True})
    worker = cluster.start_worker("w", sim.url)
    outcome: dict[str, Any] = {}
    try:
        with cluster.client() as client:
            handle = client.submit(dance_request(media_server, tmp_path), job_id="wait-through-restart")
            wait_until(lambda: sim.state()["held"], 30, "the prompt to be held")
            polling = threading.Event()

            def wait() -> None:
                try:
                    # on_progress runs inside result()'s poll loop, after its first read of the job: only from
                    # then on is a broker outage ridden out (a broker down at the call itself is an error).
                    outcome["result"] = handle.result(timeout_s=90, on_progress=lambda *_: polling.set())
                except DanceError as exc:
                    outcome["error"] = exc

            waiter = threading.Thread(target=wait)
            waiter.start()
            assert polling.wait(30), f"the producer never started polling: {outcome}"
            # When Redis goes down while the producer polls, and comes back once the producer noticed
            broker.stop()

            def noticed() -> bool:
                assert "error" not in outcome, outcome  # the wait ended instead of riding the outage out
                return "still waiting" in caplog.text

            wait_until(noticed, 60, "the producer to notice the outage")
            broker.start()
            sim.release()
            waiter.join(90)
        # Then the wait ends with the job's result, not with an unreachable broker
        assert "error" not in outcome, outcome
        assert outcome["result"]["status"] == "succeeded"
        assert "[broker.unreachable]" in caplog.text
    finally:
        worker.stop()
        broker.stop()


class RestartableRedis:
    """A redis-server of one test, with AOF, that restarts on the same port and data (a SIGTERM makes
    Redis write its AOF before it exits, as `docker restart` does)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.process = redis_service("redis-aof", self.port, folder, folder, aof=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RestartableRedis:
        self.process.start()
        wait_for_redis(self.port, 15)
        return self

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        self.process.stop()

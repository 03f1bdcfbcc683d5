"""One owner per job at the real time scale: jobs that outlast the visibility timeout through drains, broker
outages, redeliveries and cancels (real workers, Redis and simulators; GPU runs counted by the simulators)."""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from producer import keys
from producer.celeryconf import TASK_NAME
from producer.errors import DanceError
from tests.fixtures.workers import Cluster
from tests.support.jobs import dance_request, job_counter
from tests.support.processes import wait_until
from tests.worker.test_reliability import RestartableRedis

#: Visibility timeout of these tests, in seconds: heartbeats every second, lease TTL 4 s, sweeps every 2 s.
VISIBILITY_TIMEOUT_S = 4.0
FAST = {"DANCE_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S)}
#: Each job here outlasts this many visibility timeouts.
TIMEOUTS_OUTLASTED = 3
#: One sampler step of a long job, in seconds: longer than a taker's wait for its predecessor's prompt to
#: stop (worker/prompt_stop.py STOP_CONFIRM_S, 10 s) from when the takeover begins.
LONG_STEP_S = 25.0


def _gpu_runs(*sims: Any) -> int:
    """Prompts the simulators ran (or started running) for the tests' jobs, from their own records."""
    return sum(len(sim.state()["runs"]) + int(bool(sim.state()["held"])) for sim in sims)


def _redeliver_a_copy(broker: redis.Redis) -> bytes:
    """Push a copy of the one held message back onto its queue, as kombu's restore on a broker connection
    loss leaves it; returns its delivery tag."""
    [(tag, entry)] = broker.hgetall("unacked").items()
    broker.rpush("dance:5", json.dumps(json.loads(entry)[0]))
    return tag


def _outlast_visibility_timeouts(broker: redis.Redis) -> None:
    """Wait until the held message's unacked_index score has been refreshed for three visibility timeouts."""
    seen: list[float] = []
    began = time.monotonic()

    def outlasted() -> bool:
        entries = broker.zrange("unacked_index", 0, -1, withscores=True)
        if entries and (not seen or entries[0][1] != seen[-1]):
            seen.append(entries[0][1])
        return time.monotonic() - began > TIMEOUTS_OUTLASTED * VISIBILITY_TIMEOUT_S and len(seen) > 4

    wait_until(outlasted, 60, "three visibility timeouts of heartbeats")


def test_a_drain_longer_than_three_visibility_timeouts_runs_the_job_once_beside_an_idle_peer(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a job held in A's sampler and an idle, ready peer B
    sim_a, sim_b = comfysim(exec_s=0.2), comfysim(exec_s=0.2)
    sim_a.faults({"hold": True})
    worker_a = cluster.start_worker("a", sim_a.url, DANCE_DRAIN_S="120", **FAST)
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path), job_id="drained-once")
        wait_until(lambda: sim_a.state()["held"], 30, "the prompt to be held on A")
        worker_b = cluster.start_worker("b", sim_b.url, **FAST)
        worker_b.wait_for_log(" ready.")
        # When A is told to stop and its drain outlasts three visibility timeouts
        worker_a.signal(signal.SIGTERM)
        worker_a.wait_for_log("draining")
        _outlast_visibility_timeouts(redis.Redis.from_url(cluster.broker_url))
        sim_a.release()
        result = handle.result(timeout_s=60)
    # Then the job ran on A's GPU only, once, and A exited cleanly
    assert result["worker"]["hostname"].startswith("a@")
    assert worker_a.wait(timeout_s=30) == 0
    assert len(sim_a.state()["runs"]) == 1 and sim_b.state()["prompts_received"] == 0
    assert job_counter(cluster.broker_url, keys.executions("drained-once")) == 1
    assert "drained-once" not in worker_b.log()


def test_redis_down_for_twice_the_lease_ttl_mid_job_leaves_one_gpu_run_and_one_result(
    comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a broker of its own, a job held in A's sampler and an idle peer B
    broker = RestartableRedis(tmp_path / "redis").start()
    cluster = Cluster(broker_url=broker.url, root=tmp_path, storage_url=(tmp_path / "storage").as_uri())
    sim_a, sim_b = comfysim(exec_s=0.2), comfysim(exec_s=0.2)
    for sim in (sim_a, sim_b):
        sim.faults({"hold": True})
    worker_a = cluster.start_worker("a", sim_a.url, **FAST)
    worker_b = cluster.start_worker("b", sim_b.url, **FAST)
    try:
        with cluster.client() as client:
            worker_b.wait_for_log(" ready.")
            client.submit(dance_request(media_server, tmp_path), job_id="outage")
        wait_until(lambda: sim_a.state()["held"] or sim_b.state()["held"], 30, "the prompt to be held")
        holder, other = (sim_a, sim_b) if sim_a.state()["held"] else (sim_b, sim_a)
        other.faults({"clear": True})
        # When Redis is down for twice the lease TTL (the outage itself is the condition under test)
        broker.stop()
        threading.Event().wait(2 * VISIBILITY_TIMEOUT_S)
        broker.start()
        # and the job then goes on past three visibility timeouts
        _outlast_visibility_timeouts(redis.Redis.from_url(broker.url))
        holder.release()
        with cluster.client() as client:
            result = client.job("outage").result(timeout_s=90)
        # Then the job succeeded once, with one manifest, and no two GPU runs of it overlapped
        assert result["status"] == "succeeded"
        assert job_counter(broker.url, keys.manifest_writes("outage")) == 1
        runs = sorted((start, end) for sim in (sim_a, sim_b) for _, start, end, *_ in sim.state()["runs"])
        assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(runs)), runs
        assert _gpu_runs(sim_a, sim_b) == 1 or "writes nothing" in worker_a.log() + worker_b.log()
    finally:
        for worker in (worker_a, worker_b):
            worker.stop()
        broker.stop()


def test_cancelling_one_job_of_a_pipelining_worker_leaves_the_other_running(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a worker running one job in its sampler and the next one staged behind it in ComfyUI's queue
    sim = comfysim(exec_s=0.2)
    sim.faults({"hold": True})
    worker = cluster.start_worker("w", sim.url)
    with cluster.client() as client:
        running = client.submit(dance_request(media_server, tmp_path), job_id="keeps-running")
        wait_until(lambda: sim.state()["held"], 30, "the first prompt to be held")
        staged = client.submit(dance_request(media_server, tmp_path), job_id="cancelled-staged")
        wait_until(lambda: len(sim.request("GET", "/queue")["queue_pending"]) == 1, 30, "the next prompt staged")
        # When the staged job is cancelled
        staged.cancel()
        wait_until(lambda: not sim.request("GET", "/queue")["queue_pending"], 30, "the staged prompt dropped")
        # Then the running job goes on and succeeds, and only the staged one was stopped
        sim.release()
        assert running.result(timeout_s=60)["status"] == "succeeded"
        wait_until(lambda: staged.status() == "REVOKED", 30, "the staged job to end REVOKED")
    assert sim.state()["interrupts"] == 0
    assert "worker shutting down" not in worker.log()


def test_a_redelivered_copy_of_a_live_job_is_dropped_at_once_and_the_worker_takes_other_work(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a job held in A's sampler, and a copy of its message back in the queue (as kombu's restore on a
    # broker connection loss leaves it), with B idle
    sim_a, sim_b = comfysim(exec_s=0.2), comfysim(exec_s=0.2)
    sim_a.faults({"hold": True})
    cluster.start_worker("a", sim_a.url, **FAST)
    broker = redis.Redis.from_url(cluster.broker_url)
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path), job_id="live-job")
        wait_until(lambda: sim_a.state()["held"], 30, "the prompt to be held on A")
        worker_b = cluster.start_worker("b", sim_b.url, **FAST)
        worker_b.wait_for_log(" ready.")
        # When B receives the copy
        tag = _redeliver_a_copy(broker)
        # Then B drops it within a lease TTL, without a GPU run, and takes the next job at once
        worker_b.wait_for_log("job.duplicate_delivery", timeout_s=3 * VISIBILITY_TIMEOUT_S)
        other = client.submit(dance_request(media_server, tmp_path, seed=99), job_id="next-job")
        assert other.result(timeout_s=60)["worker"]["hostname"].startswith("b@")
        # and A's heartbeat put back the unacked entry the copy's ack deleted, so A's job is still recoverable
        wait_until(lambda: broker.hexists("unacked", tag), 3 * VISIBILITY_TIMEOUT_S, "A's entry back")
        sim_a.release()
        assert handle.result(timeout_s=60)["worker"]["hostname"].startswith("a@")
    assert job_counter(cluster.broker_url, keys.executions("live-job")) == 1
    assert sim_b.state()["prompts_received"] == 1


def test_a_job_taken_over_from_a_killed_worker_first_stops_the_prompt_it_left_in_a_surviving_comfyui(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a job held in A's sampler, on a ComfyUI in a container of its own (it outlives A), and a peer B
    sim_a, sim_b = comfysim(exec_s=0.2), comfysim(exec_s=0.2)
    sim_a.faults({"hold": True})
    worker_a = cluster.start_worker("a", sim_a.url, **FAST)
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path), job_id="taken-over")
        wait_until(lambda: sim_a.state()["held"], 30, "the prompt to be held on A")
        cluster.start_worker("b", sim_b.url, **FAST)
        # When A is SIGKILLed and stays down, its prompt still running for nobody
        worker_a.kill()
        # Then B takes the job over once the lease expires and the message comes back
        result = handle.result(timeout_s=90)
    assert result["worker"]["hostname"].startswith("b@")
    # and A's orphaned prompt was stopped before B's run began: the job never ran on two GPUs at once
    [orphan] = [run for run in sim_a.state()["runs"] if run[3] == "taken-over"]
    [taken] = [run for run in sim_b.state()["runs"] if run[3] == "taken-over"]
    assert orphan[2] <= taken[1], (orphan, taken)
    assert sim_a.state()["interrupts"] >= 1


def test_a_job_taken_over_waits_until_the_prompt_its_dead_run_left_in_a_long_sampler_step_has_stopped(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a job running on A's ComfyUI (a container of its own: it outlives A) in sampler steps of LONG_STEP_S,
    # where an interrupt lands only at the next step, and two idle peers B and C
    sim_a, sim_b, sim_c = comfysim(exec_s=2 * LONG_STEP_S), comfysim(exec_s=0.2), comfysim(exec_s=0.2)
    worker_a = cluster.start_worker("a", sim_a.url, **FAST)
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path, steps=2), job_id="long-step")
        wait_until(lambda: sim_a.state()["running"] is not None, 30, "the prompt to run on A")
        cluster.start_worker("b", sim_b.url, **FAST)
        cluster.start_worker("c", sim_c.url, **FAST)
        # When A is SIGKILLed mid-step and stays down
        worker_a.kill()
        killed_at = time.time()
        # Then a peer takes the job over, but runs it only once A's prompt has left A's ComfyUI
        result = handle.result(timeout_s=120)
    taker, sim_t, idle = ("b", sim_b, sim_c) if result["worker"]["hostname"].startswith("b@") else ("c", sim_c, sim_b)
    assert result["worker"]["hostname"].startswith(f"{taker}@")
    assert sim_a.state()["running"] is None, "A's prompt still runs after the job ended"
    [orphan] = [run for run in sim_a.state()["runs"] if run[3] == "long-step"]
    [taken] = [run for run in sim_t.state()["runs"] if run[3] == "long-step"]
    # and the taker's lease held through its wait, longer than three lease TTLs: the other peer never ran it
    assert taken[1] - killed_at >= (TIMEOUTS_OUTLASTED + 1) * VISIBILITY_TIMEOUT_S, (killed_at, taken)
    assert [run for run in idle.state()["runs"] if run[3] == "long-step"] == []
    assert orphan[2] <= taken[1], (orphan, taken)
    # and the orphan was cut short by B's interrupts, not left to run its full length
    assert orphan[2] - orphan[1] < 2 * LONG_STEP_S and sim_a.state()["interrupts"] >= 1


def test_a_live_run_that_dies_right_after_its_copy_was_dropped_still_gets_its_job_redelivered(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a job held in A's sampler and a copy of its message that idle B receives and drops
    sim_a, sim_b = comfysim(exec_s=0.2), comfysim(exec_s=0.2)
    sim_a.faults({"hold": True})
    worker_a = cluster.start_worker("a", sim_a.url, **FAST)
    broker = redis.Redis.from_url(cluster.broker_url)
    with cluster.client() as client:
        handle = client.submit(dance_request(media_server, tmp_path), job_id="holder-dies")
        wait_until(lambda: sim_a.state()["held"], 30, "the prompt to be held on A")
        worker_b = cluster.start_worker("b", sim_b.url, **FAST)
        worker_b.wait_for_log(" ready.")
        tag = _redeliver_a_copy(broker)
        worker_b.wait_for_log("job.duplicate_delivery", timeout_s=3 * VISIBILITY_TIMEOUT_S)
        # When A freezes before its heartbeat can put back the entry the copy's ack deleted, then dies
        worker_a.signal(signal.SIGSTOP)
        wait_until(lambda: broker.hexists("unacked", tag), 3 * VISIBILITY_TIMEOUT_S, "the entry kept by B")
        worker_a.kill()
        # Then the job is not lost: its message comes back once its lease and entry expire, and B runs it
        result = handle.result(timeout_s=90)
    assert result["worker"]["hostname"].startswith("b@")


def test_a_redelivered_copy_of_a_failed_job_is_dropped_and_leaves_its_failure_as_it_was(
    cluster: Cluster, comfysim: Any, media_server: Any, tmp_path: Path
) -> None:
    # Given a job that failed for good (its image is gone)
    sim = comfysim(exec_s=0.2)
    worker = cluster.start_worker("w", sim.url, **FAST)
    gone = media_server.serve("/gone.png", b"", status=404)
    request = dance_request(media_server, tmp_path, reference_image=gone)
    with cluster.client() as client:
        handle = client.submit(request, job_id="failed-for-good")
        with pytest.raises(DanceError) as failed:
            handle.result(timeout_s=60)
        # When a copy of its message is delivered again (a redelivery after a broker outage)
        client.app.send_task(TASK_NAME, kwargs={"request": request}, task_id="failed-for-good", queue="dance")
        # Then the copy is dropped without running, and the job still reads as the failure it was
        worker.wait_for_log("job.already_ended")
        assert handle.status() == "FAILURE"
        with pytest.raises(DanceError) as again:
            handle.result(timeout_s=5)
    assert failed.value.code == again.value.code == "input.not_found"
    assert job_counter(cluster.broker_url, keys.attempts("failed-for-good")) == 1

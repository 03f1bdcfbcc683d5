"""The broker itself fails mid-job: a Sentinel failover, and an outage that outlasts the bookkeeping retries
(real workers, redis-server and redis-sentinel processes, simulators; GPU runs counted by the simulators)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.sentinel import Sentinel

from harness.local import wait_for_redis
from producer import keys
from tests.fixtures.workers import Cluster
from tests.support.jobs import dance_request, job_counter
from tests.support.processes import ManagedProcess, free_port, wait_until
from tests.worker.test_ownership import FAST, _outlast_visibility_timeouts
from tests.worker.test_reliability import RestartableRedis
from worker.runtime import REDIS_RETRY_BACKOFF, retries_within
from worker.settings import DEFAULT_REDIS_RETRY_S

MASTER = "dancemaster"
#: Sentinels watching the master, and how many must agree that it is down before one fails it over.
SENTINELS, QUORUM = 3, 2
#: A master silent this long is down for a Sentinel, in milliseconds: short, so the failover takes a few
#: seconds; longer than a PING answer on a loaded 2-core machine.
DOWN_AFTER_MS = 1500
#: How long one failover try may take before another Sentinel tries again, in milliseconds.
FAILOVER_TIMEOUT_MS = 4000
#: How long the bookkeeping calls of the outage test's worker retry, in seconds (DANCE_REDIS_RETRY_S).
SHORT_REDIS_RETRY_S = 2.0
#: How late the simulator answers the job's POST /prompt, in seconds: the prompt is queued at once, and the
#: broker is stopped while the worker waits for the answer, so its next bookkeeping call meets the outage.
PROMPT_ANSWER_DELAY_S = 6.0


class SentinelGroup:
    """A master, its replica (``--replicaof``) and three Sentinels, all real processes on loopback."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.binary = shutil.which("redis-server") or "redis-server"
        self.ports = {"master": free_port(), "replica": free_port()}
        self.sentinel_ports = [free_port() for _ in range(SENTINELS)]
        self.servers = {name: self._server(name, port) for name, port in self.ports.items()}
        self.sentinels = [self._sentinel(port) for port in self.sentinel_ports]

    @property
    def url(self) -> str:
        nodes = ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"{nodes}/0"

    def _server(self, name: str, port: int) -> ManagedProcess:
        argv = [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.folder)]
        if name == "replica":
            argv += ["--replicaof", "127.0.0.1", str(self.ports["master"])]
        return ManagedProcess(f"redis-{name}", argv, self.folder / f"{name}.log")

    def _sentinel(self, port: int) -> ManagedProcess:
        config = self.folder / f"sentinel-{port}.conf"  # Sentinel rewrites its file: one each
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.folder}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.ports['master']} {QUORUM}\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
        )
        return ManagedProcess(f"sentinel-{port}", [self.binary, str(config), "--sentinel"],
                              self.folder / f"sentinel-{port}.log")

    def start(self) -> SentinelGroup:
        for name, server in self.servers.items():
            server.start()
            wait_for_redis(self.ports[name], 15)
        for sentinel in self.sentinels:
            sentinel.start()
        # A failover needs every Sentinel to know the replica and a quorum of its peers.
        wait_until(self._ready, 60, "the Sentinels to know the replica and each other")
        return self

    def _ready(self) -> bool:
        try:
            return all(self._sees_replica_and_peers(port) for port in self.sentinel_ports)
        except redis.ConnectionError:
            return False

    def _sees_replica_and_peers(self, port: int) -> bool:
        with redis.Redis(port=port) as probe:
            replicas = probe.sentinel_slaves(MASTER)  # type: ignore[no-untyped-call]
            peers = probe.sentinel_sentinels(MASTER)  # type: ignore[no-untyped-call]
        linked = any(replica["port"] == self.ports["replica"] and not replica["is_sdown"]
                     and replica.get("master-link-status") == "ok" for replica in replicas)
        return linked and len(peers) == SENTINELS - 1

    def master_port(self) -> set[int]:
        """The master's port as each Sentinel names it (one port once they agree)."""
        named = set()
        for port in self.sentinel_ports:
            with redis.Redis(port=port) as probe:
                _host, master = probe.sentinel_get_master_addr_by_name(MASTER)  # type: ignore[no-untyped-call]
                named.add(int(master))
        return named

    def kill_master(self) -> int:
        """kill -9 the server the Sentinels name master now; returns the port of the one left."""
        [port] = self.master_port()
        [killed] = [name for name, server_port in self.ports.items() if server_port == port]
        self.servers[killed].kill()
        return next(server_port for server_port in self.ports.values() if server_port != port)

    def lose_on_replica(self, *names: str) -> None:
        """Delete keys on the replica alone: what it lacks when the master's last writes never reached it."""
        with redis.Redis(port=self.ports["replica"]) as replica:
            replica.config_set("replica-read-only", "no")  # local writes, never sent back to the master
            replica.delete(*names)

    def master(self) -> redis.Redis:
        sentinel = Sentinel([("127.0.0.1", port) for port in self.sentinel_ports])  # type: ignore[no-untyped-call]
        client: redis.Redis = sentinel.master_for(MASTER, socket_timeout=5.0)  # type: ignore[no-untyped-call]
        return client

    def stop(self) -> None:
        for process in [*self.sentinels, *self.servers.values()]:
            process.stop()


def _gpu_runs_never_overlap(*sims: Any) -> list[tuple[float, float]]:
    runs = sorted((start, end) for sim in sims for _, start, end, *_ in sim.state()["runs"])
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(runs)), runs
    return runs


@pytest.mark.parametrize("replica", ["in_sync", "lacking_the_last_writes"])
def test_a_sentinel_failover_mid_job_leaves_one_result_and_no_two_gpu_runs_at_once(
    comfysim: Any, media_server: Any, tmp_path: Path, replica: str
) -> None:
    # Given a master, its replica and three Sentinels, two workers that know the broker only through them,
    # and a job held in one worker's sampler
    group = SentinelGroup(tmp_path / "redis").start()
    cluster = Cluster(broker_url=group.url, root=tmp_path, storage_url=(tmp_path / "storage").as_uri(),
                      sentinel_master=MASTER)
    sim_a, sim_b = comfysim(exec_s=0.2), comfysim(exec_s=0.2)
    for sim in (sim_a, sim_b):
        sim.faults({"hold": True})
    workers = [cluster.start_worker("a", sim_a.url, **FAST), cluster.start_worker("b", sim_b.url, **FAST)]
    try:
        for worker in workers:
            worker.wait_for_log(" ready.")
        with cluster.client() as client:
            client.submit(dance_request(media_server, tmp_path), job_id="failover")
        wait_until(lambda: sim_a.state()["held"] or sim_b.state()["held"], 30, "the prompt to be held")
        holder, other = (sim_a, sim_b) if sim_a.state()["held"] else (sim_b, sim_a)
        other.faults({"clear": True})  # a second run, if any, must not hide behind a hold
        if replica == "lacking_the_last_writes":
            # Replication is asynchronous: the replica may lack the job's lease and its unacked entry
            group.lose_on_replica(keys.lease("failover"), "unacked")
        # When the master is killed -9 and the Sentinels promote its replica
        survivor = group.kill_master()
        wait_until(lambda: group.master_port() == {survivor}, 60, "every Sentinel to name the promoted replica")
        # and the job then goes on past three visibility timeouts
        promoted = group.master()
        _outlast_visibility_timeouts(promoted)
        # (by then a live run holds the lease and the message's entry is back, whatever the replica lacked)
        assert promoted.exists(keys.lease("failover")) and promoted.hlen("unacked") == 1
        holder.release()
        with cluster.client() as client:
            result = client.job("failover").result(timeout_s=90)
        # Then the job succeeded once, with one manifest, and no two GPU runs of it overlapped
        assert result["status"] == "succeeded"
        assert int(promoted.get(keys.manifest_writes("failover")) or 0) == 1
        runs = _gpu_runs_never_overlap(sim_a, sim_b)
        # and a second run happened only after the first was fenced: it stopped and wrote nothing
        logs = "".join(worker.log() for worker in workers)
        assert len(runs) == 1 or "writes nothing" in logs, runs
        if replica == "lacking_the_last_writes":  # the lost lease was taken back, or its taker fenced the run
            assert "this run took it back" in logs or "writes nothing" in logs
    finally:
        for worker in workers:
            worker.stop()
        group.stop()


@pytest.mark.parametrize("back_after", [
    # back as soon as the job gave up: the REQUEUED state and the reject go through the result backend's retries
    pytest.param("[broker.unreachable]", id="back_once_the_job_gave_up"),
    # away through the result backend's own retries too: the REQUEUED write and the reject both fail
    pytest.param("reject requeue=True", id="away_through_the_handback"),
])
def test_a_broker_outage_right_after_post_prompt_stops_the_prompt_and_hands_the_job_back(
    comfysim: Any, media_server: Any, tmp_path: Path, back_after: str
) -> None:
    # Given a broker of its own, a worker whose bookkeeping calls retry for 2 s, and a ComfyUI that queues the
    # job's prompt at once, holds it in the sampler and answers the POST /prompt late
    broker = RestartableRedis(tmp_path / "redis").start()
    cluster = Cluster(broker_url=broker.url, root=tmp_path, storage_url=(tmp_path / "storage").as_uri())
    sim = comfysim(exec_s=0.2)
    sim.faults({"hold": True, "slow_route": "/prompt", "slow_s": PROMPT_ANSWER_DELAY_S})
    worker = cluster.start_worker("w", sim.url, DANCE_REDIS_RETRY_S=str(SHORT_REDIS_RETRY_S), **FAST)
    try:
        worker.wait_for_log(" ready.")
        with cluster.client() as client:
            client.submit(dance_request(media_server, tmp_path), job_id="broker-away")
        wait_until(lambda: sim.state()["held"], 30, "the prompt to run in the sampler")
        # When the broker stops before the worker has the answer to its POST /prompt, and stays away for
        # longer than the bookkeeping retries (it comes back once the worker's log says it got that far)
        broker.stop()
        worker.wait_for_log(back_after, timeout_s=60)
        # Then the worker stopped the prompt it had queued: the run record ends, interrupted
        wait_until(lambda: sim.state()["runs"], 30, "the held run to end")
        assert sim.state()["interrupts"] == 1 and not sim.state()["held"]
        broker.start()
        # and the job, handed back rather than failed, runs again and succeeds once
        with cluster.client() as client:
            result = client.job("broker-away").result(timeout_s=90)
        assert result["status"] == "succeeded"
        assert job_counter(broker.url, keys.attempts("broker-away")) == 2
        assert job_counter(broker.url, keys.manifest_writes("broker-away")) == 1
        assert len(_gpu_runs_never_overlap(sim)) == 2  # the stopped run and the one that succeeded
        assert "reject requeue=True: [broker.unreachable]" in worker.log() and "FAILURE" not in worker.log()
    finally:
        worker.stop()
        broker.stop()


def test_the_default_bookkeeping_retry_budget_keeps_the_twelve_retries_of_about_30_s() -> None:
    # Given the default budget, When it is turned into retries, Then it is today's 12 (30.3 s of pauses)
    assert retries_within(DEFAULT_REDIS_RETRY_S, REDIS_RETRY_BACKOFF) == 12
    # and a shorter budget gives fewer retries, none at all for 0
    assert retries_within(SHORT_REDIS_RETRY_S, REDIS_RETRY_BACKOFF) == 5
    assert retries_within(0.0, REDIS_RETRY_BACKOFF) == 0

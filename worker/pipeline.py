"""Keep the GPU busy: stage the next job while one runs, but never while another GPU sits idle.

A job passes through phases: *preparing* (download inputs, upload them, queue the prompt), *waiting*
(its prompt sits in ComfyUI's queue), *executing* (ComfyUI runs it: the GPU is busy), *finishing*
(outputs to storage, manifest, cleanup). The old endpoint ran them one after the other, so the GPU idled
during every download and upload. Here a worker takes the next message as soon as its current job
executes, so that job N+1 is downloaded, uploaded and queued in ComfyUI while N runs (ComfyUI then
starts it the moment N ends), and N-1's outputs are uploaded at the same time.

Prefetching is what makes work conservation easy to get wrong (celery#4537, #5480): a busy worker that
holds the next job makes it wait behind its GPU while another GPU may be idle. So a busy worker takes a
job ahead only while the queue holds more jobs than there are idle workers; idle workers announce
themselves in a Redis sorted set per queue. The decision is made where kombu decides whether to issue
the next BRPOP (``qos.can_consume``, wrapped as Celery's own ``worker_disable_prefetch`` does), so no
message is taken that the rule forbids; a message that still lands on a busy worker in the instant a
peer turned idle is handed back (:meth:`Pipeline.should_hand_back`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from celery.worker import state as worker_state

from producer.celeryconf import PRIORITY_SEPARATOR, PRIORITY_STEPS
from worker.ownership.registry import EXECUTING, FINISHING, PREPARING, WAITING, Registry

# The phases live with the runs (worker/ownership/registry.py); job code names them through the pipeline.
__all__ = ["EXECUTING", "FINISHING", "PREPARING", "WAITING", "ClusterView", "Pipeline", "concurrency_for", "idle_key"]

log = logging.getLogger(__name__)

#: How often the worker refreshes its view of the cluster (idle peers, backlog), in seconds.
VIEW_REFRESH_S = 0.2
#: An idle announcement older than this no longer counts, in seconds (the announcer may have died).
IDLE_TTL_S = 2.0

# The cluster view in one server-side script: announce (ZADD/ZREM), drop announcements older than
# IDLE_TTL_S (a dead worker's), count the idle peers (ZCOUNT, O(log N)) and sum the priority lists'
# lengths, and return two integers. It used to read every idle peer's name back (ZRANGEBYSCORE) in a
# pipeline of 12 commands per queue, whose reply grew with the fleet: every worker paid O(N) bytes five
# times a second, O(N^2) for the broker. Now a refresh costs one EVALSHA and a fixed number of commands
# inside Redis, whatever the fleet's size (harness/bench_fleet.py measures it per worker).
# A script rather than one summary key that an elected worker refreshes: every worker still has to
# announce itself each refresh, so the summary would save only the LLENs, and it would add an election, a
# view as old as the leader's last refresh and a gap whenever the leader dies. Peers idle in several of
# this worker's queues are counted once per queue: exact for a worker of one queue (the recommended layout,
# a queue per GPU class); an over-count only leaves a job in the queue for a peer, never hoards one.
VIEW_SCRIPT = """
local host, now, ttl, idle = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == "1"
local queues = tonumber(ARGV[5])
local peers, backlog = 0, 0
for q = 1, queues do
  if idle then redis.call("ZADD", KEYS[q], now, host) else redis.call("ZREM", KEYS[q], host) end
  redis.call("ZREMRANGEBYSCORE", KEYS[q], "-inf", "(" .. (now - ttl))
  peers = peers + redis.call("ZCOUNT", KEYS[q], now - ttl, "+inf") - (idle and 1 or 0)
end
for i = queues + 1, #KEYS do
  backlog = backlog + redis.call("LLEN", KEYS[i])
end
return {peers, backlog}
"""


def concurrency_for(depth: int) -> int:
    """Pool threads a worker needs: the staged jobs, the executing one and one finishing; 1 when serial."""
    return depth + 2 if depth else 1


def idle_key(queue: str) -> str:
    return f"dance:idle:{queue}"


@dataclass(frozen=True)
class ClusterView:
    """What the other workers of this worker's queues look like, refreshed every VIEW_REFRESH_S."""

    idle_peers: int = 0
    backlog: int = 0


class Pipeline:
    def __init__(self, client: redis.Redis, queues: tuple[str, ...], depth: int, registry: Registry) -> None:
        #: How many jobs may be staged ahead of the executing one (0: the old serial design).
        self.depth = depth
        self.client, self.queues = client, queues
        self.hostname = ""
        self.ready: Callable[[], bool] = lambda: False
        self.view = ClusterView()
        #: The runs this worker holds, with their phases (worker/ownership/registry.py).
        self.registry = registry
        self._view_script = client.register_script(VIEW_SCRIPT)
        #: The script's keys: every queue's idle set, then every queue's priority lists.
        self._view_keys = [idle_key(queue) for queue in queues] + [
            f"{queue}{PRIORITY_SEPARATOR}{step}" if step else queue for queue in queues for step in PRIORITY_STEPS]

    @property
    def concurrency(self) -> int:
        return concurrency_for(self.depth)

    def counts(self) -> tuple[int, int, int]:
        """(staged, executing, total): staged includes messages received whose job has not started, and not
        a redelivered copy that is only deciding whether the job's lease holder lives (it holds no GPU)."""
        phases = [run.phase for run in self.registry.runs()]
        unstarted = max(0, len(worker_state.reserved_requests) - len(phases))
        staged = unstarted + sum(phase in (PREPARING, WAITING) for phase in phases)
        executing = sum(phase == EXECUTING for phase in phases)
        return staged, executing, unstarted + len(phases)

    # Decisions ----------------------------------------------------------------------------------------
    def admits(self) -> bool:
        """Whether to take one more message now (called by kombu before each BRPOP)."""
        staged, executing, total = self.counts()
        if self.depth == 0:
            return total == 0
        if staged >= self.depth or total >= self.concurrency:
            return False
        # An idle GPU takes work at once; a busy one takes work ahead only beyond what idle peers can take.
        return executing == 0 or self.view.backlog > self.view.idle_peers

    def should_hand_back(self, job_id: str) -> bool:
        """A message that reached this worker while it is busy and a peer is idle goes back to the queue."""
        others = [run.phase for run in self.registry.runs() if run.job_id != job_id]
        busy = any(phase in (PREPARING, WAITING, EXECUTING) for phase in others)
        return busy and self.view.idle_peers > self.view.backlog

    # The cluster view (a thread of its own) ----------------------------------------------------------
    def run_view(self, stop: threading.Event) -> None:
        while not stop.wait(VIEW_REFRESH_S):
            try:
                self.refresh_view()
            except redis.RedisError as exc:
                log.debug("cluster view not refreshed: %s", exc)

    def refresh_view(self) -> None:
        """Announce this worker idle (or not) and read the view back: one script call, one round trip."""
        staged, executing, _ = self.counts()
        idle = bool(self.hostname) and self.ready() and staged == 0 and executing == 0
        peers, backlog = self._view_script(keys=self._view_keys,
                                           args=[self.hostname, time.time(), IDLE_TTL_S, int(idle), len(self.queues)])
        self.view = ClusterView(idle_peers=int(peers), backlog=int(backlog))

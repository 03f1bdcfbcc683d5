"""The pipeline's cluster view: right about idle peers and backlog, at a cost that does not grow with the fleet."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import redis

from harness.bench_fleet import BrokerCost, BrokerSample
from worker.ownership.registry import Registry
from worker.pipeline import IDLE_TTL_S, Pipeline, idle_key

QUEUE = "dance"


def pipeline(redis_db: str, hostname: str, ready: bool = True) -> Pipeline:
    view = Pipeline(redis.Redis.from_url(redis_db), (QUEUE,), depth=1, registry=Registry())
    view.hostname = hostname
    view.ready = lambda: ready
    return view


def announce_peers(client: redis.Redis, count: int) -> None:
    client.zadd(idle_key(QUEUE), {f"peer{n}@host": time.time() for n in range(count)})


def one_refresh_cost(redis_db: str, view: Pipeline) -> BrokerCost:
    port = int(urlsplit(redis_db).port or 6379)
    start = BrokerSample.read(port)
    view.refresh_view()
    return BrokerCost.between(start, BrokerSample.read(port))


def test_the_view_counts_fresh_idle_peers_and_every_priority_list_of_the_queue(redis_db: str) -> None:
    # Given three idle workers, a fourth that died long ago, and jobs waiting at three priorities
    client = redis.Redis.from_url(redis_db)
    client.zadd(idle_key(QUEUE), {"ghost@host": time.time() - 10 * IDLE_TTL_S})
    client.lpush(QUEUE, "a", "b")
    client.lpush(f"{QUEUE}:5", "c", "d", "e")
    client.lpush(f"{QUEUE}:9", "f")
    a, b, c = (pipeline(redis_db, f"{name}@host") for name in "abc")
    for view in (a, b, c):
        view.refresh_view()
    # When the first refreshes again
    a.refresh_view()
    # Then it sees the two other idle workers, not itself nor the dead one, and all six jobs
    assert (a.view.idle_peers, a.view.backlog) == (2, 6)
    assert client.zscore(idle_key(QUEUE), "ghost@host") is None
    # And once a worker stops being idle (its ComfyUI went away), its peers count it out at their next refresh
    b.ready = lambda: False
    b.refresh_view()
    a.refresh_view()
    assert (a.view.idle_peers, b.view.idle_peers) == (1, 2)


def test_a_refresh_costs_one_round_trip_and_the_same_commands_and_bytes_at_2_or_200_workers(redis_db: str) -> None:
    # Given a worker whose script is loaded, first among one idle peer, then among 199
    client = redis.Redis.from_url(redis_db)
    view = pipeline(redis_db, "me@host")
    view.refresh_view()
    announce_peers(client, 1)
    small = one_refresh_cost(redis_db, view)
    assert view.view.idle_peers == 1
    announce_peers(client, 199)
    # When it refreshes in each fleet
    large = one_refresh_cost(redis_db, view)
    assert view.view.idle_peers == 199
    # Then each refresh is one EVALSHA, and the commands it runs inside Redis (Redis counts them too) and
    # the bytes it moves are the same, but for digits: of the peer count in the reply ("1" and "199"), and
    # of the clock in the request
    assert small.calls["evalsha"] == 1
    assert small.calls == large.calls and small.commands == large.commands == sum(small.calls.values())
    assert abs(small.input_bytes - large.input_bytes) <= 4
    assert abs(small.output_bytes - large.output_bytes) <= 2

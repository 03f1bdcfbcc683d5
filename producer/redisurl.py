"""Redis clients for the project's own keys, from the same URLs Celery uses, Sentinel included.

Celery and kombu read ``sentinel://host:26379;sentinel://host2:26379/0`` URLs with the master's name in
their transport options; redis-py's ``from_url`` does not. This builds the same client either way, so the
broker's own availability (Redis Sentinel) serves every part of the cluster, not only Celery's.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from producer.errors import CONFIG_INVALID, error

SENTINEL_SCHEME = "sentinel://"
#: Separator between the Sentinel nodes of one URL (Celery's and kombu's convention).
SENTINEL_SEPARATOR = ";"
#: Port a Sentinel node listens on when its URL names none.
DEFAULT_SENTINEL_PORT = 26379


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME)


def redis_client(url: str, master_name: str | None = None, **options: Any) -> redis.Redis:
    """A client of the Redis at ``url``; for a ``sentinel://`` URL, of the master Sentinel names."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    if not master_name:
        raise error(CONFIG_INVALID, "a sentinel:// broker URL needs DANCE_SENTINEL_MASTER, the monitored master's name",
                    variable="DANCE_SENTINEL_MASTER")
    nodes, password, db = [], None, 0
    for chunk in url.split(SENTINEL_SEPARATOR):
        parts = urlsplit(chunk)
        nodes.append((parts.hostname or "127.0.0.1", parts.port or DEFAULT_SENTINEL_PORT))
        password = unquote(parts.password) if parts.password else password
        db = int(parts.path.strip("/") or db)
    timeouts = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(nodes, sentinel_kwargs=timeouts, **timeouts)  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        master_name, db=db, password=password, **options)
    return client


def sentinel_options(url: str, master_name: str | None) -> dict[str, Any]:
    """Transport options Celery needs beside a ``sentinel://`` URL (empty for a plain Redis URL)."""
    return {"master_name": master_name} if is_sentinel(url) and master_name else {}

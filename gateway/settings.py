"""Gateway settings, read once from the environment (``DANCE_GATEWAY_*`` plus the producer's own)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from producer.errors import CONFIG_INVALID, error
from producer.settings import ProducerSettings, env_float, env_int
from worker.settings import DEFAULT_PRESIGN_EXPIRES_S

#: Address the gateway listens on unless DANCE_GATEWAY_HOST says otherwise (loopback: safe without keys).
DEFAULT_HOST = "127.0.0.1"
#: TCP port of the gateway.
DEFAULT_PORT = 8188
#: Largest JSON body a route reads, in bytes (asset uploads stream and have their own cap).
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
#: Jobs waiting in one queue beyond which a submit answers 429 (0: no cap).
DEFAULT_MAX_QUEUE_DEPTH = 1000
#: Seconds a 429 asks the caller to wait (its Retry-After header).
DEFAULT_RETRY_AFTER_S = 5
#: Longest /runsync wait before it answers with the job still queued or running, in seconds.
DEFAULT_RUNSYNC_WAIT_S = 90.0
#: Seconds between two SSE keep-alive comments (the SDK treats 45 s of silence as a stalled stream).
DEFAULT_SSE_KEEPALIVE_S = 15.0
#: Seconds between two reads of a job's state while its SSE stream waits (the pub/sub fallback).
DEFAULT_SSE_POLL_INTERVAL_S = 2.0
#: Threads that run the gateway's blocking producer calls (Redis, Celery); each waits on Redis only briefly.
DEFAULT_THREADS = 32
#: Jobs one GET /api/v2/jobs page holds unless ``limit`` says otherwise.
DEFAULT_LIST_LIMIT = 20
#: Most jobs one GET /api/v2/jobs page may hold.
MAX_LIST_LIMIT = 100
#: Largest asset one upload may carry, in bytes (2 GiB); uploads stream, so this bounds storage, not memory.
DEFAULT_MAX_ASSET_BYTES = 2 << 30
#: Seconds between two sweeps of blobs whose every asset expired (gateway/asset_sweeper.py); 0: no sweep.
DEFAULT_SWEEP_INTERVAL_S = 3600.0


@dataclass(frozen=True)
class GatewaySettings:
    producer: ProducerSettings = field(default_factory=ProducerSettings)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: A YAML or JSON file of API keys (see gateway/auth.py); None: keys only from ``api_keys``.
    keys_file: Path | None = None
    #: API keys given inline, ``name=secret[@queue,queue]`` separated by ';' (DANCE_GATEWAY_API_KEYS).
    api_keys: str = ""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_queue_depth: int = DEFAULT_MAX_QUEUE_DEPTH
    retry_after_s: int = DEFAULT_RETRY_AFTER_S
    runsync_wait_s: float = DEFAULT_RUNSYNC_WAIT_S
    sse_keepalive_s: float = DEFAULT_SSE_KEEPALIVE_S
    sse_poll_interval_s: float = DEFAULT_SSE_POLL_INTERVAL_S
    threads: int = DEFAULT_THREADS
    #: RunPod endpoint id → queue, ``endpoint=queue`` separated by ','; an endpoint not named uses the
    #: key's default queue.
    endpoint_queues: tuple[tuple[str, str], ...] = ()
    #: The largest asset an upload may carry, in bytes (DANCE_GATEWAY_MAX_ASSET_BYTES).
    max_asset_bytes: int = DEFAULT_MAX_ASSET_BYTES
    #: Folder uploads are spooled to while hashed (DANCE_GATEWAY_SPOOL_DIR); None: the system's temporary one.
    spool_dir: Path | None = None
    #: Lifetime of the presigned URLs of S3 assets, in seconds (DANCE_PRESIGN_EXPIRES_S, as the workers read it).
    presign_expires_s: int = DEFAULT_PRESIGN_EXPIRES_S
    #: Seconds between two sweeps of expired assets' blobs (DANCE_GATEWAY_SWEEP_INTERVAL_S); 0: this gateway
    #: never sweeps.
    sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewaySettings:
        env = os.environ if environ is None else environ
        keys_file = env.get("DANCE_GATEWAY_KEYS_FILE") or None
        spool_dir = env.get("DANCE_GATEWAY_SPOOL_DIR") or None
        settings = cls(
            producer=ProducerSettings.from_env(env),
            host=env.get("DANCE_GATEWAY_HOST", DEFAULT_HOST),
            port=env_int(env, "DANCE_GATEWAY_PORT", DEFAULT_PORT),
            keys_file=Path(keys_file) if keys_file else None,
            api_keys=env.get("DANCE_GATEWAY_API_KEYS", ""),
            max_body_bytes=env_int(env, "DANCE_GATEWAY_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            max_queue_depth=env_int(env, "DANCE_GATEWAY_MAX_QUEUE_DEPTH", DEFAULT_MAX_QUEUE_DEPTH),
            retry_after_s=env_int(env, "DANCE_GATEWAY_RETRY_AFTER_S", DEFAULT_RETRY_AFTER_S),
            runsync_wait_s=env_float(env, "DANCE_GATEWAY_RUNSYNC_WAIT_S", DEFAULT_RUNSYNC_WAIT_S),
            sse_keepalive_s=env_float(env, "DANCE_GATEWAY_SSE_KEEPALIVE_S", DEFAULT_SSE_KEEPALIVE_S),
            sse_poll_interval_s=env_float(env, "DANCE_GATEWAY_SSE_POLL_INTERVAL_S", DEFAULT_SSE_POLL_INTERVAL_S),
            threads=env_int(env, "DANCE_GATEWAY_THREADS", DEFAULT_THREADS),
            endpoint_queues=parse_endpoint_queues(env.get("DANCE_GATEWAY_ENDPOINT_QUEUES", "")),
            max_asset_bytes=env_int(env, "DANCE_GATEWAY_MAX_ASSET_BYTES", DEFAULT_MAX_ASSET_BYTES),
            spool_dir=Path(spool_dir) if spool_dir else None,
            presign_expires_s=env_int(env, "DANCE_PRESIGN_EXPIRES_S", DEFAULT_PRESIGN_EXPIRES_S),
            sweep_interval_s=env_float(env, "DANCE_GATEWAY_SWEEP_INTERVAL_S", DEFAULT_SWEEP_INTERVAL_S),
        )
        settings.check()
        return settings

    def check(self) -> None:
        for name, value in (("DANCE_GATEWAY_PORT", self.port), ("DANCE_GATEWAY_MAX_BODY_BYTES", self.max_body_bytes),
                            ("DANCE_GATEWAY_RETRY_AFTER_S", self.retry_after_s),
                            ("DANCE_GATEWAY_THREADS", self.threads),
                            ("DANCE_GATEWAY_MAX_ASSET_BYTES", self.max_asset_bytes)):
            if value < 1:
                raise error(CONFIG_INVALID, f"{name} must be at least 1, not {value}", variable=name)
        if self.max_queue_depth < 0:
            raise error(CONFIG_INVALID, "DANCE_GATEWAY_MAX_QUEUE_DEPTH must be 0 (no cap) or more",
                        variable="DANCE_GATEWAY_MAX_QUEUE_DEPTH")
        for name, seconds in (("DANCE_GATEWAY_RUNSYNC_WAIT_S", self.runsync_wait_s),
                              ("DANCE_GATEWAY_SSE_KEEPALIVE_S", self.sse_keepalive_s),
                              ("DANCE_GATEWAY_SSE_POLL_INTERVAL_S", self.sse_poll_interval_s)):
            if seconds <= 0:
                raise error(CONFIG_INVALID, f"{name} must be above 0 seconds, not {seconds}", variable=name)
        if self.sweep_interval_s < 0:
            raise error(CONFIG_INVALID, "DANCE_GATEWAY_SWEEP_INTERVAL_S must be 0 (no sweep) or more seconds",
                        variable="DANCE_GATEWAY_SWEEP_INTERVAL_S")

    def queue_for_endpoint(self, endpoint: str) -> str | None:
        return dict(self.endpoint_queues).get(endpoint)


def parse_endpoint_queues(raw: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for chunk in filter(None, (part.strip() for part in raw.split(","))):
        endpoint, sep, queue = chunk.partition("=")
        if not sep or not endpoint.strip() or not queue.strip():
            raise error(CONFIG_INVALID, f"DANCE_GATEWAY_ENDPOINT_QUEUES entry {chunk!r} is not endpoint=queue",
                        variable="DANCE_GATEWAY_ENDPOINT_QUEUES")
        pairs.append((endpoint.strip(), queue.strip()))
    return tuple(pairs)

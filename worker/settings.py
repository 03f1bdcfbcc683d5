"""Worker settings: one frozen dataclass, built once from the environment at the entry point.

Every default is a named constant with its unit. Celery's own names are used where they exist
(``CELERY_BROKER_URL``, ``CELERY_RESULT_BACKEND``); the README's configuration table lists them all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from producer.errors import CONFIG_INVALID, error
from producer.settings import DEFAULT_BROKER_URL, DEFAULT_QUEUE, DEFAULT_STORAGE_URL, env_bool, env_float, env_int

#: Where ComfyUI listens when COMFYUI_URL is unset.
DEFAULT_COMFYUI_URL = "http://127.0.0.1:8188"
#: The workflow template shipped with the worker.
DEFAULT_WORKFLOW_PATH = Path(__file__).parent / "workflows" / "dance_scail.json"
#: How long the gate waits for ComfyUI before the worker exits non-zero, in seconds.
DEFAULT_READY_TIMEOUT_S = 600.0
#: How often the gate logs what is still missing, in seconds.
DEFAULT_READY_LOG_INTERVAL_S = 10.0
#: First readiness poll delay, in seconds (a refused connect costs ComfyUI nothing).
DEFAULT_READY_POLL_MIN_S = 0.05
#: Longest pause between readiness polls, in seconds.
DEFAULT_READY_POLL_MAX_S = 1.0
#: How often a ready worker repeats the full readiness check (node classes and model files, the one heavy
#: /object_info), in seconds: ComfyUI's model lists follow its folders, so a model file copied in or deleted
#: shows up here, in the capabilities the gateway routes by, and in readiness, within this time.
DEFAULT_FULL_CHECK_INTERVAL_S = 60.0
#: Execution deadline of a job that does not ask for one, in seconds.
DEFAULT_JOB_DEADLINE_S = 1200.0
#: Largest deadline a producer may ask for, in seconds.
DEFAULT_MAX_JOB_DEADLINE_S = 3600.0
#: Longest a job's prompt may wait in ComfyUI's queue before it starts executing, in seconds; past it
#: the job goes back to the broker (comfyui.queue_wait_exceeded). As long as the largest deadline: a
#: pipelined prompt waits behind at most one running job.
DEFAULT_COMFYUI_QUEUE_WAIT_S = DEFAULT_MAX_JOB_DEADLINE_S
#: Time a job may spend outside execution (downloads, uploads), in seconds.
JOB_IO_ALLOWANCE_S = 900.0
#: Redis visibility timeout, in seconds. Live jobs keep their messages fresh (worker/refresher.py,
#: docs/celery-on-redis.md#lease-refresh), so this only bounds how long a dead worker's job waits
#: before it is redelivered.
DEFAULT_VISIBILITY_TIMEOUT_S = 40.0
#: Shortest visibility timeout, in seconds: the heartbeat needs a few beats within it.
MIN_VISIBILITY_TIMEOUT_S = 4.0
#: Heartbeats per visibility timeout: three may be missed before a live job's message looks dead.
HEARTBEATS_PER_TIMEOUT = 4
#: Beats a lease must outlast at the least: its TTL is never below this many heartbeat intervals.
MIN_BEATS_PER_LEASE = 3
#: Longest pause between two sweeps that return expired messages, in seconds.
MAX_RESTORE_INTERVAL_S = 5
#: Jobs a worker stages (downloads, uploads, queues in ComfyUI) while another executes; 0 is the old
#: serial design (download, run, upload, then the next job).
DEFAULT_PIPELINE_DEPTH = 1
#: How long a worker told to stop (SIGTERM) lets its running job go on before handing it back to
#: the queue, in seconds; docker's stop_grace_period must exceed it.
DEFAULT_DRAIN_S = 60.0
#: How long finished results stay in the result backend, in seconds (7 days).
DEFAULT_RESULT_EXPIRES_S = 7 * 24 * 3600
#: Largest media download, in bytes (1 GiB).
DEFAULT_MAX_DOWNLOAD_BYTES = 1 << 30
#: TCP connect timeout of a media download, in seconds.
DEFAULT_CONNECT_TIMEOUT_S = 10.0
#: Whole-download timeout of one media file, in seconds.
DEFAULT_DOWNLOAD_TIMEOUT_S = 300.0
#: Attempts per media download when the failure is transient.
DEFAULT_DOWNLOAD_ATTEMPTS = 3
#: Timeout of one plain HTTP call to ComfyUI, in seconds.
DEFAULT_COMFYUI_HTTP_TIMEOUT_S = 30.0
#: Times a job may be handed back to the queue after transient failures (ComfyUI died, storage
#: hiccup) before it fails with the last error's code.
DEFAULT_MAX_ATTEMPTS = 5
#: Lifetime of presigned result URLs, in seconds (7 days, the S3 maximum).
DEFAULT_PRESIGN_EXPIRES_S = 7 * 24 * 3600
#: How long a job's bookkeeping Redis call (leases, counters, markers) retries while the broker does not
#: answer, in seconds: long enough to ride out a broker restart (AOF reload) or a Sentinel failover;
#: past it the job is handed back (broker.unreachable).
DEFAULT_REDIS_RETRY_S = 30.0
#: DANCE_WARMUP values: no warm-up, or a run of the workflow on the bundled sample media; any other value
#: names a warm-up request file.
WARMUP_OFF, WARMUP_ON = "off", "on"
#: Warm-up when DANCE_WARMUP is unset: off, so a worker over the simulator (whose models load at once) or a
#: test starts without a run; the GPU image sets it on (docker/Dockerfile).
DEFAULT_WARMUP = WARMUP_OFF
#: Longest the warm-up's prompt may run, in seconds: a cold GPU reads ~30 GB of models within it.
DEFAULT_WARMUP_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class FetchSettings:
    """How media inputs are downloaded."""

    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    download_timeout_s: float = DEFAULT_DOWNLOAD_TIMEOUT_S
    attempts: int = DEFAULT_DOWNLOAD_ATTEMPTS
    #: Hosts, IPs or CIDRs that may be fetched although they are private or loopback.
    allow_hosts: tuple[str, ...] = ()
    #: PEM bundle of the authorities that sign https media hosts; None trusts certifi's public bundle.
    ca_bundle: Path | None = None


@dataclass(frozen=True)
class WorkerSettings:
    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str = DEFAULT_BROKER_URL
    comfyui_url: str = DEFAULT_COMFYUI_URL
    workflow_path: Path = DEFAULT_WORKFLOW_PATH
    storage_url: str = DEFAULT_STORAGE_URL
    queues: tuple[str, ...] = (DEFAULT_QUEUE,)
    require_gpu: bool = False
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    ready_log_interval_s: float = DEFAULT_READY_LOG_INTERVAL_S
    ready_poll_min_s: float = DEFAULT_READY_POLL_MIN_S
    ready_poll_max_s: float = DEFAULT_READY_POLL_MAX_S
    full_check_interval_s: float = DEFAULT_FULL_CHECK_INTERVAL_S
    job_deadline_s: float = DEFAULT_JOB_DEADLINE_S
    max_job_deadline_s: float = DEFAULT_MAX_JOB_DEADLINE_S
    visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S
    #: TTL of a job's execution lease, in seconds; None: the visibility timeout, so a dead worker's
    #: lease has expired by the time its message is redelivered.
    lease_ttl_override_s: float | None = None
    result_expires_s: int = DEFAULT_RESULT_EXPIRES_S
    comfyui_http_timeout_s: float = DEFAULT_COMFYUI_HTTP_TIMEOUT_S
    comfyui_queue_wait_s: float = DEFAULT_COMFYUI_QUEUE_WAIT_S
    presign_expires_s: int = DEFAULT_PRESIGN_EXPIRES_S
    redis_retry_s: float = DEFAULT_REDIS_RETRY_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    drain_s: float = DEFAULT_DRAIN_S
    pipeline_depth: int = DEFAULT_PIPELINE_DEPTH
    #: Name of the master that Redis Sentinel monitors, for sentinel:// broker URLs.
    sentinel_master: str | None = None
    #: ComfyUI's input and output folders when the worker shares them (a volume); lets the worker
    #: delete the files of finished jobs, which ComfyUI's API cannot do.
    comfyui_input_dir: Path | None = None
    comfyui_output_dir: Path | None = None
    #: Scratch folder for downloads; a fresh temporary folder when unset.
    work_dir: Path | None = None
    fetch: FetchSettings = field(default_factory=FetchSettings)
    #: ``off``, ``on`` (bundled sample media) or the path of a warm-up request file (worker/warmup.py).
    warmup: str = DEFAULT_WARMUP
    warmup_timeout_s: float = DEFAULT_WARMUP_TIMEOUT_S

    @property
    def restore_interval_s(self) -> int:
        """Seconds between kombu's sweeps for expired messages: a dead worker's job is back within
        ``visibility_timeout_s + restore_interval_s``."""
        return max(1, min(MAX_RESTORE_INTERVAL_S, int(self.visibility_timeout_s / 2)))

    @property
    def heartbeat_interval_s(self) -> float:
        """Seconds between two heartbeats (lease renewals and held-message refreshes)."""
        return self.visibility_timeout_s / HEARTBEATS_PER_TIMEOUT

    @property
    def lease_ttl_s(self) -> float:
        return self.lease_ttl_override_s if self.lease_ttl_override_s is not None else self.visibility_timeout_s

    def __post_init__(self) -> None:
        if self.visibility_timeout_s < MIN_VISIBILITY_TIMEOUT_S:
            raise error(
                CONFIG_INVALID,
                f"DANCE_VISIBILITY_TIMEOUT_S={self.visibility_timeout_s:g} is below {MIN_VISIBILITY_TIMEOUT_S:g}s; "
                "live jobs refresh their lease four times per timeout",
                visibility_timeout_s=self.visibility_timeout_s,
            )
        if self.lease_ttl_s < MIN_BEATS_PER_LEASE * self.heartbeat_interval_s:
            raise error(
                CONFIG_INVALID,
                f"DANCE_LEASE_TTL_S={self.lease_ttl_s:g} is below {MIN_BEATS_PER_LEASE} heartbeats "
                f"({MIN_BEATS_PER_LEASE * self.heartbeat_interval_s:g}s at this visibility timeout)",
                lease_ttl_s=self.lease_ttl_s, heartbeat_interval_s=self.heartbeat_interval_s,
            )
        if not 0 < self.job_deadline_s <= self.max_job_deadline_s:
            raise error(
                CONFIG_INVALID,
                "DANCE_JOB_DEADLINE_S must be positive and at most DANCE_MAX_JOB_DEADLINE_S",
                job_deadline_s=self.job_deadline_s,
                max_job_deadline_s=self.max_job_deadline_s,
            )
        if self.redis_retry_s < 0:
            raise error(CONFIG_INVALID, "DANCE_REDIS_RETRY_S must be 0 (no retry) or more",
                        redis_retry_s=self.redis_retry_s)
        if self.pipeline_depth < 0:
            raise error(CONFIG_INVALID, "DANCE_PIPELINE_DEPTH must be 0 (serial) or more",
                        pipeline_depth=self.pipeline_depth)
        if not self.queues:
            raise error(CONFIG_INVALID, "DANCE_QUEUES names no queue", queues=list(self.queues))
        if self.warmup_timeout_s <= 0:
            raise error(CONFIG_INVALID, "DANCE_WARMUP_TIMEOUT_S must be positive",
                        warmup_timeout_s=self.warmup_timeout_s)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if environ is None else environ
        broker = env.get("CELERY_BROKER_URL", DEFAULT_BROKER_URL)
        max_deadline = env_float(env, "DANCE_MAX_JOB_DEADLINE_S", DEFAULT_MAX_JOB_DEADLINE_S)
        return cls(
            broker_url=broker,
            result_backend=env.get("CELERY_RESULT_BACKEND", broker),
            comfyui_url=env.get("COMFYUI_URL", DEFAULT_COMFYUI_URL).rstrip("/"),
            workflow_path=Path(env.get("DANCE_WORKFLOW", str(DEFAULT_WORKFLOW_PATH))),
            storage_url=env.get("DANCE_STORAGE_URL", DEFAULT_STORAGE_URL),
            queues=_csv(env.get("DANCE_QUEUES", DEFAULT_QUEUE)),
            require_gpu=env_bool(env, "COMFYUI_REQUIRE_GPU", False),
            ready_timeout_s=env_float(env, "COMFYUI_READY_TIMEOUT_S", DEFAULT_READY_TIMEOUT_S),
            ready_log_interval_s=env_float(env, "COMFYUI_READY_LOG_INTERVAL_S", DEFAULT_READY_LOG_INTERVAL_S),
            full_check_interval_s=env_float(env, "COMFYUI_FULL_CHECK_INTERVAL_S", DEFAULT_FULL_CHECK_INTERVAL_S),
            job_deadline_s=env_float(env, "DANCE_JOB_DEADLINE_S", DEFAULT_JOB_DEADLINE_S),
            max_job_deadline_s=max_deadline,
            visibility_timeout_s=env_float(env, "DANCE_VISIBILITY_TIMEOUT_S", DEFAULT_VISIBILITY_TIMEOUT_S),
            lease_ttl_override_s=env_float(env, "DANCE_LEASE_TTL_S", 0.0) or None,
            drain_s=env_float(env, "DANCE_DRAIN_S", DEFAULT_DRAIN_S),
            pipeline_depth=env_int(env, "DANCE_PIPELINE_DEPTH", DEFAULT_PIPELINE_DEPTH),
            sentinel_master=env.get("DANCE_SENTINEL_MASTER") or None,
            result_expires_s=env_int(env, "DANCE_RESULT_EXPIRES_S", DEFAULT_RESULT_EXPIRES_S),
            comfyui_http_timeout_s=env_float(env, "COMFYUI_HTTP_TIMEOUT_S", DEFAULT_COMFYUI_HTTP_TIMEOUT_S),
            comfyui_queue_wait_s=env_float(env, "COMFYUI_QUEUE_WAIT_S", max_deadline),
            presign_expires_s=env_int(env, "DANCE_PRESIGN_EXPIRES_S", DEFAULT_PRESIGN_EXPIRES_S),
            redis_retry_s=env_float(env, "DANCE_REDIS_RETRY_S", DEFAULT_REDIS_RETRY_S),
            max_attempts=env_int(env, "DANCE_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS),
            comfyui_input_dir=_path_or_none(env.get("COMFYUI_INPUT_DIR")),
            comfyui_output_dir=_path_or_none(env.get("COMFYUI_OUTPUT_DIR")),
            work_dir=_path_or_none(env.get("DANCE_WORK_DIR")),
            warmup=_warmup_mode(env.get("DANCE_WARMUP", DEFAULT_WARMUP)),
            warmup_timeout_s=env_float(env, "DANCE_WARMUP_TIMEOUT_S", DEFAULT_WARMUP_TIMEOUT_S),
            fetch=FetchSettings(
                max_download_bytes=env_int(env, "DANCE_MAX_DOWNLOAD_BYTES", DEFAULT_MAX_DOWNLOAD_BYTES),
                connect_timeout_s=env_float(env, "DANCE_CONNECT_TIMEOUT_S", DEFAULT_CONNECT_TIMEOUT_S),
                download_timeout_s=env_float(env, "DANCE_DOWNLOAD_TIMEOUT_S", DEFAULT_DOWNLOAD_TIMEOUT_S),
                attempts=env_int(env, "DANCE_DOWNLOAD_ATTEMPTS", DEFAULT_DOWNLOAD_ATTEMPTS),
                allow_hosts=_csv(env.get("DANCE_FETCH_ALLOW_HOSTS", "")),
                ca_bundle=_path_or_none(env.get("DANCE_FETCH_CA_BUNDLE")),
            ),
        )


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _warmup_mode(value: str) -> str:
    """``off`` and ``on`` in the spellings env_bool takes; anything else is a request file's path."""
    word = value.strip().lower()
    if word in ("", "0", "false", "no", WARMUP_OFF):
        return WARMUP_OFF
    if word in ("1", "true", "yes", WARMUP_ON):
        return WARMUP_ON
    return value.strip()


def _path_or_none(value: str | None) -> Path | None:
    return Path(value) if value else None

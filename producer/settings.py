"""Producer settings: what a service needs to submit dance jobs, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from producer.errors import CONFIG_INVALID, error

#: Broker (and, unless CELERY_RESULT_BACKEND says otherwise, result backend) when nothing is set.
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
#: The queue dance jobs go to unless the caller names another.
DEFAULT_QUEUE = "dance"
#: Embedded storage: a local folder under the user's data directory.
DEFAULT_STORAGE_URL = (Path.home() / ".local" / "share" / "xicon-dance" / "storage").as_uri()
#: How long `dance submit --wait` and `handle.result()` wait by default, in seconds.
DEFAULT_WAIT_TIMEOUT_S = 3600.0
#: How long a producer tries to reach the broker before giving up, in seconds.
DEFAULT_BROKER_CONNECT_TIMEOUT_S = 5.0

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class ProducerSettings:
    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str = DEFAULT_BROKER_URL
    storage_url: str = DEFAULT_STORAGE_URL
    default_queue: str = DEFAULT_QUEUE
    wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S
    broker_connect_timeout_s: float = DEFAULT_BROKER_CONNECT_TIMEOUT_S
    #: Name of the master that Redis Sentinel monitors, for sentinel:// broker URLs.
    sentinel_master: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProducerSettings:
        env = os.environ if environ is None else environ
        broker = env.get("CELERY_BROKER_URL", DEFAULT_BROKER_URL)
        return cls(
            broker_url=broker,
            result_backend=env.get("CELERY_RESULT_BACKEND", broker),
            storage_url=env.get("DANCE_STORAGE_URL", DEFAULT_STORAGE_URL),
            default_queue=env.get("DANCE_QUEUE", DEFAULT_QUEUE),
            wait_timeout_s=env_float(env, "DANCE_WAIT_TIMEOUT_S", DEFAULT_WAIT_TIMEOUT_S),
            broker_connect_timeout_s=env_float(
                env, "DANCE_BROKER_CONNECT_TIMEOUT_S", DEFAULT_BROKER_CONNECT_TIMEOUT_S
            ),
            sentinel_master=env.get("DANCE_SENTINEL_MASTER") or None,
        )


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise error(CONFIG_INVALID, f"{name}={raw!r} is not a number", variable=name) from None


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise error(CONFIG_INVALID, f"{name}={raw!r} is not a whole number", variable=name) from None


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise error(CONFIG_INVALID, f"{name}={raw!r} is not a boolean (use 1/0, true/false)", variable=name)

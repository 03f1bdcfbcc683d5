"""Settings of the hooks worker (webhook deliveries, batch completions): one frozen dataclass from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from producer.errors import CONFIG_INVALID, error
from producer.settings import DEFAULT_BROKER_URL, env_float, env_int
from producer.webhooks import secret_key

#: Deliveries one hooks worker runs at once (threads; each mostly waits on a remote endpoint).
DEFAULT_CONCURRENCY = 8
#: Whole-request timeout of one delivery attempt, in seconds (connect, send, answer).
DEFAULT_TIMEOUT_S = 10.0
#: Attempts per delivery before it fails with the last error's code.
DEFAULT_ATTEMPTS = 8
#: First pause before retrying a failed delivery, in seconds; doubles per attempt.
DEFAULT_RETRY_BASE_S = 5.0
#: Longest pause between two attempts, in seconds.
DEFAULT_RETRY_CAP_S = 900.0
#: How often the outbox reconciler looks for entries that are due (a retry, a lost publish), in seconds.
DEFAULT_RECONCILE_INTERVAL_S = 2.0
#: How long an entry the reconciler published may wait to be claimed before it is published again, in seconds.
DEFAULT_REPUBLISH_AFTER_S = 60.0
#: How long a claim outlives one attempt's timeout before the entry is due again, in seconds: covers the
#: Redis calls around the POST, so only a dead hooks worker's claim expires.
CLAIM_MARGIN_S = 10.0
#: How long delivery results stay in the result backend, in seconds (7 days).
DEFAULT_RESULT_EXPIRES_S = 7 * 24 * 3600


@dataclass(frozen=True)
class HooksSettings:
    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str = DEFAULT_BROKER_URL
    #: ``whsec_<base64>``; without it no webhook is sent (batch completions are still recorded).
    secret: str | None = None
    #: Hosts, IPs or CIDRs that callbacks may reach although they are private or loopback.
    allow_hosts: tuple[str, ...] = ()
    timeout_s: float = DEFAULT_TIMEOUT_S
    attempts: int = DEFAULT_ATTEMPTS
    retry_base_s: float = DEFAULT_RETRY_BASE_S
    retry_cap_s: float = DEFAULT_RETRY_CAP_S
    concurrency: int = DEFAULT_CONCURRENCY
    reconcile_interval_s: float = DEFAULT_RECONCILE_INTERVAL_S
    republish_after_s: float = DEFAULT_REPUBLISH_AFTER_S
    result_expires_s: int = DEFAULT_RESULT_EXPIRES_S
    #: Name of the master that Redis Sentinel monitors, for sentinel:// broker URLs.
    sentinel_master: str | None = None

    def __post_init__(self) -> None:
        if self.secret is not None:
            secret_key(self.secret)  # a malformed secret stops the worker at start, with its code
        if self.attempts < 1 or self.concurrency < 1 or self.timeout_s <= 0:
            raise error(CONFIG_INVALID, "DANCE_WEBHOOK_ATTEMPTS, DANCE_WEBHOOK_CONCURRENCY and "
                        "DANCE_WEBHOOK_TIMEOUT_S must be positive", attempts=self.attempts,
                        concurrency=self.concurrency, timeout_s=self.timeout_s)
        if self.reconcile_interval_s <= 0 or self.republish_after_s <= 0:
            raise error(CONFIG_INVALID, "DANCE_WEBHOOK_RECONCILE_INTERVAL_S and DANCE_WEBHOOK_REPUBLISH_AFTER_S "
                        "must be positive", reconcile_interval_s=self.reconcile_interval_s,
                        republish_after_s=self.republish_after_s)

    @property
    def claim_s(self) -> float:
        """How long a delivery in progress holds its outbox entry before the entry is due again."""
        return self.timeout_s + CLAIM_MARGIN_S

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HooksSettings:
        env = os.environ if environ is None else environ
        broker = env.get("CELERY_BROKER_URL", DEFAULT_BROKER_URL)
        return cls(
            broker_url=broker,
            result_backend=env.get("CELERY_RESULT_BACKEND", broker),
            secret=env.get("DANCE_WEBHOOK_SECRET") or None,
            allow_hosts=tuple(p.strip() for p in env.get("DANCE_WEBHOOK_ALLOW_HOSTS", "").split(",") if p.strip()),
            timeout_s=env_float(env, "DANCE_WEBHOOK_TIMEOUT_S", DEFAULT_TIMEOUT_S),
            attempts=env_int(env, "DANCE_WEBHOOK_ATTEMPTS", DEFAULT_ATTEMPTS),
            retry_base_s=env_float(env, "DANCE_WEBHOOK_RETRY_BASE_S", DEFAULT_RETRY_BASE_S),
            retry_cap_s=env_float(env, "DANCE_WEBHOOK_RETRY_CAP_S", DEFAULT_RETRY_CAP_S),
            concurrency=env_int(env, "DANCE_WEBHOOK_CONCURRENCY", DEFAULT_CONCURRENCY),
            reconcile_interval_s=env_float(env, "DANCE_WEBHOOK_RECONCILE_INTERVAL_S", DEFAULT_RECONCILE_INTERVAL_S),
            republish_after_s=env_float(env, "DANCE_WEBHOOK_REPUBLISH_AFTER_S", DEFAULT_REPUBLISH_AFTER_S),
            result_expires_s=env_int(env, "DANCE_RESULT_EXPIRES_S", DEFAULT_RESULT_EXPIRES_S),
            sentinel_master=env.get("DANCE_SENTINEL_MASTER") or None,
        )

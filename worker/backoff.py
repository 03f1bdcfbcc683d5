"""One backoff rule for every wait in the worker: readiness polls, reconnects and download retries."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter and a cap, all in seconds."""

    #: First delay, in seconds.
    base_s: float
    #: Largest delay ever returned, in seconds.
    cap_s: float
    #: Growth per attempt.
    factor: float = 2.0
    #: Fraction of the delay that is randomised (0 = none, 1 = full jitter).
    jitter: float = 0.2

    def delay_s(self, attempt: int, rand: random.Random | None = None) -> float:
        return backoff_delay_s(attempt, self.base_s, self.cap_s, self.factor, self.jitter, rand)


def backoff_delay_s(
    attempt: int,
    base_s: float,
    cap_s: float,
    factor: float = 2.0,
    jitter: float = 0.2,
    rand: random.Random | None = None,
) -> float:
    """Delay before retry number ``attempt`` (0-based): ``min(cap, base * factor**attempt)``, jittered down.

    Jitter only ever shortens the delay, so the cap is a true upper bound and many workers
    restarting together spread out instead of polling in lockstep.
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    # Bound the exponent so huge attempt numbers cannot overflow a float.
    raw = base_s * factor ** min(attempt, 64)
    delay = min(cap_s, raw)
    if jitter <= 0:
        return delay
    draw = (rand or random).random()
    return delay * (1.0 - jitter * draw)

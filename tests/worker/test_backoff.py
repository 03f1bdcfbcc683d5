"""The one backoff rule: exponential, capped, jittered downwards only."""

from __future__ import annotations

import random

import pytest

from worker.backoff import Backoff, backoff_delay_s


def test_delays_grow_exponentially_until_the_cap_without_jitter() -> None:
    delays = [backoff_delay_s(n, base_s=0.1, cap_s=1.0, jitter=0) for n in range(6)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_jitter_only_shortens_the_delay_and_the_cap_holds() -> None:
    rand = random.Random(7)
    for attempt in range(50):
        delay = backoff_delay_s(attempt, base_s=0.05, cap_s=2.0, jitter=0.5, rand=rand)
        ceiling = min(2.0, 0.05 * 2**attempt)
        assert ceiling * 0.5 <= delay <= ceiling


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert Backoff(base_s=1.0, cap_s=30.0, jitter=0).delay_s(10_000) == 30.0


def test_a_negative_attempt_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        backoff_delay_s(-1, base_s=1, cap_s=2)

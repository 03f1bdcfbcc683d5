"""Fixtures of the operators' features: a webhook receiver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.ops import WebhookReceiver, webhook_receiver


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    yield from webhook_receiver()

"""Fixtures of the fake's own tests: an SDK client pointed at the running fake."""

from __future__ import annotations

import pytest
import stripe

from payout_ledger.testing.fake_stripe import FakeStripe


@pytest.fixture
def client(fake: FakeStripe) -> stripe.StripeClient:
    """The real stripe SDK's client, talking HTTP to ``fake``."""
    return fake.client()

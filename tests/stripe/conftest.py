"""Fixtures for the Stripe end-to-end tests: a running fake and a connected account."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from payout_ledger import PayoutLedger
from payout_ledger.testing.fake_stripe import FakeStripe
from tests.stripe.stripe_support import LedgerMaker, build_ledger, real_gateway


@pytest.fixture
def make_stripe_ledger(fake: FakeStripe, account: str) -> Iterator[LedgerMaker]:
    """Build ledgers on the real gateway (pointed at the fake); closed after the test.

    Keyword overrides: ``gateway``, ``account_id``, ``clock``, ``ledger_class``.
    """
    made: list[PayoutLedger] = []

    def make(store_url: str, **overrides: Any) -> PayoutLedger:
        gateway = overrides.pop("gateway", None) or real_gateway(fake)
        account_id = overrides.pop("account_id", account)
        ledger = build_ledger(store_url, account_id, gateway, **overrides)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger.close()

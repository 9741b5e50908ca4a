"""Helpers for the end-to-end Stripe tests: ledgers on the real gateway, the fake's logs.

Import this folder as ``tests.stripe``, never with ``tests/`` itself on
``sys.path``: as a top-level package named ``stripe`` it would shadow the
Stripe SDK.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from payout_ledger import LedgerSettings, PayoutLedger, ServiceProvider
from payout_ledger.domain.payout import parse_idempotency_key
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing import InMemoryProviderDirectory
from payout_ledger.testing.fake_stripe import FakeStripe, RecordedRequest

DAY_AND_A_BIT = 24 * 3600 + 60
"""Past Stripe's 24-hour idempotency key pruning, and past the ledger's window."""

AMOUNT = 5000
CURRENCY = "usd"

LedgerMaker = Callable[..., PayoutLedger]
"""``make_stripe_ledger(store_url, **overrides)``: see the folder's conftest."""
PROVIDER_ID = "prov_stripe"
PROVIDER_USER_ID = "user_stripe"


class SimulatedCrash(BaseException):
    """The process dies here: not an Exception, so nothing in the ledger catches it."""


class MutableClock:
    """A ledger clock that tests move forward by hand."""

    def __init__(self) -> None:
        self._now = datetime.now(UTC)

    def now(self) -> datetime:
        # Follows real time too: event timestamps are real, so "now" never
        # falls behind the attempt it is compared with.
        return max(self._now, datetime.now(UTC))

    def advance(self, seconds: float) -> None:
        self._now = max(self._now, datetime.now(UTC)) + timedelta(seconds=seconds)


def real_gateway(fake: FakeStripe, *, timeout: float = 10.0) -> StripeTransferGateway:
    """The production gateway, pointed at the fake, with no SDK retries."""
    return real_gateway_for(fake.url, fake.api_key, timeout=timeout)


def real_gateway_for(
    api_base: str, api_key: str, *, timeout: float = 10.0
) -> StripeTransferGateway:
    """The same, from a URL and key (in a child process)."""
    return StripeTransferGateway(api_key, api_base=api_base, timeout=timeout, max_network_retries=0)


def provider_for(account_id: str | None) -> ServiceProvider:
    return ServiceProvider(id=PROVIDER_ID, user_id=PROVIDER_USER_ID, stripe_account_id=account_id)


def build_ledger(
    store_url: str,
    account_id: str | None,
    gateway: Any,
    *,
    clock: Any = None,
    ledger_class: type[PayoutLedger] = PayoutLedger,
    **settings: Any,
) -> PayoutLedger:
    return ledger_class(
        settings=LedgerSettings(store_url=store_url, **settings),
        providers=InMemoryProviderDirectory([provider_for(account_id)]),
        gateway=gateway,
        clock=clock,
    )


def release_request(event_service_id: str) -> dict[str, object]:
    return {
        "event_service_id": event_service_id,
        "provider_id": PROVIDER_ID,
        "amount": {"amount": AMOUNT, "currency": CURRENCY},
    }


def transfers_for(fake: FakeStripe, event_service_id: str) -> list[dict[str, Any]]:
    """The fake's transfers whose metadata names this event service."""
    return [
        t
        for t in fake.transfers()
        if (t.get("metadata") or {}).get("event_service_id") == event_service_id
    ]


def transfer_posts(fake: FakeStripe, event_service_id: str | None = None) -> list[RecordedRequest]:
    """``POST /v1/transfers`` requests the fake received (for one service, if named).

    A request whose parameters were not decoded yet (still held by a fault) is
    matched by its idempotency key instead.
    """
    posts = [r for r in fake.requests if r.method == "POST" and r.path == "/v1/transfers"]
    if event_service_id is None:
        return posts

    def names_service(r: RecordedRequest) -> bool:
        metadata = r.params.get("metadata")
        if isinstance(metadata, dict):
            return metadata.get("event_service_id") == event_service_id
        parsed = None if r.idempotency_key is None else parse_idempotency_key(r.idempotency_key)
        return parsed is not None and parsed[0] == event_service_id

    return [r for r in posts if names_service(r)]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


def topics(ledger: PayoutLedger, event_service_id: str) -> list[str]:
    """The payout's event class names, oldest first."""
    return [type(e).__name__ for e in ledger.history(event_service_id)]

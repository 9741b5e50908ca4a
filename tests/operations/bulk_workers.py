"""Code that runs in the OS processes of the bulk release tests."""

from __future__ import annotations

import json
import sys
from typing import Any

from payout_ledger import LedgerSettings, PayoutLedger, ServiceProvider
from payout_ledger.adapters.rate_budget import open_rate_budget
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing import InMemoryProviderDirectory


def reserve_slots(
    store_url: str, name: str, interval: float, count: int, barrier: Any
) -> list[float]:
    """Reserve ``count`` slots of the budget, all processes starting together; the
    slots as the store's clock gave them."""
    try:
        ledger = PayoutLedger(
            settings=LedgerSettings(store_url=store_url, stripe_enabled=False),
            providers=InMemoryProviderDirectory([]),
        )
        budget = open_rate_budget(ledger.factory.datastore, name)
    except BaseException:
        barrier.abort()
        raise
    barrier.wait(timeout=60)
    try:
        return [budget.reserve(interval).slot for _ in range(count)]
    finally:
        ledger.close()


def bulk_ledger(store_url: str, api_base: str, api_key: str, account: str) -> PayoutLedger:
    """A ledger paying ``prov_alice`` at ``account`` through the fake Stripe."""
    settings = LedgerSettings(
        store_url=store_url,
        stripe_api_key=api_key,
        stripe_api_base=api_base,
        stripe_max_network_retries=0,
        bulk_rate_limit=1000,
    )
    return PayoutLedger(
        settings=settings,
        providers=InMemoryProviderDirectory(
            [ServiceProvider(id="prov_alice", user_id="user_alice", stripe_account_id=account)]
        ),
        gateway=StripeTransferGateway.from_settings(settings),
    )


def batch(count: int) -> list[dict[str, Any]]:
    return [
        {
            "event_service_id": f"es_{n}",
            "provider_id": "prov_alice",
            "amount": {"amount": 100 + n, "currency": "usd"},
        }
        for n in range(count)
    ]


def main() -> None:
    """Run a batch to the end (or until killed): ``store_url api_base api_key account count``."""
    store_url, api_base, api_key, account, count = sys.argv[1:6]
    with bulk_ledger(store_url, api_base, api_key, account) as ledger:
        report = ledger.release_many(batch(int(count)), concurrency=2)
    print(json.dumps(report.summary()))


if __name__ == "__main__":
    main()

"""Shared test data and helpers."""

from __future__ import annotations

from payout_ledger import ServiceProvider

ALICE = ServiceProvider(id="prov_alice", user_id="user_alice", stripe_account_id="acct_alice")
BOB_NOT_ONBOARDED = ServiceProvider(id="prov_bob", user_id="user_bob")


def release(
    event_service_id: str,
    provider_id: str = "prov_alice",
    amount: int = 5000,
    currency: str = "usd",
) -> dict[str, object]:
    """A release request as a host would write it."""
    return {
        "event_service_id": event_service_id,
        "provider_id": provider_id,
        "amount": {"amount": amount, "currency": currency},
    }

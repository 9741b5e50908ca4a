"""The endpoint and Stripe API versions: another version's event reaches no host callback."""

from __future__ import annotations

from payout_ledger import STRIPE_API_VERSION
from payout_ledger.domain.stripe_events import StripeEventOutcome

from .conftest import Site, make_event, payment_intent

OLD_VERSION = "2020-08-27"


def test_the_shared_event_builder_uses_the_pinned_version() -> None:
    assert make_event("customer.created", {"id": "cus_1"})["api_version"] == STRIPE_API_VERSION


def test_an_event_of_another_version_is_recorded_without_callbacks(site: Site) -> None:
    payment = make_event("payment_intent.succeeded", payment_intent())
    payment["api_version"] = OLD_VERSION
    account = make_event(
        "account.updated",
        {"id": "acct_alice", "object": "account", "payouts_enabled": False},
        account="acct_alice",
    )
    account["api_version"] = OLD_VERSION

    for event in (payment, account):
        response = site.deliver(event)
        assert response.status_code == 200
        assert response.json()["outcome"] == StripeEventOutcome.RECORDED
        assert site.ledger.has_stripe_event(event["id"])

    assert site.callbacks.count == 0
    assert site.ledger.captured_payment(payment["data"]["object"]["id"]) is None
    assert site.ledger.account_payability("acct_alice") is None


def test_an_event_of_the_pinned_version_reaches_the_callbacks(site: Site) -> None:
    response = site.deliver(
        make_event(
            "account.updated",
            {"id": "acct_alice", "object": "account", "payouts_enabled": False},
            account="acct_alice",
        )
    )

    assert response.json()["outcome"] == StripeEventOutcome.APPLIED
    assert [(a, enabled) for a, enabled, _ in site.callbacks.accounts] == [("acct_alice", False)]
    payability = site.ledger.account_payability("acct_alice")
    assert payability is not None and payability.payable and payability.payouts_enabled is False

"""Events of connected accounts and of the other mode never move the platform's books.

The trial's finding: an event's top-level ``account`` was ignored. A connected
account's ``payment_intent.succeeded`` was recorded as the platform's capture
(and reached the host's callback, which could not tell), and a connected
account's ``transfer.created`` with matching metadata settled an in-flight
9,000 usd payout although its amount (1 usd) and destination differed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from payout_ledger import (
    PayoutLedger,
    PayoutStatus,
    TransferOutcomeUnknown,
)
from payout_ledger.domain.stripe_events import StripeEventOutcome
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing import InMemoryTransferGateway
from tests.support import release

from .conftest import Site, SiteFactory, make_event, payment_intent

SERVICE = "es_9000"
AMOUNT = 900_000


@pytest.fixture
def in_flight(ledger: PayoutLedger, gateway: InMemoryTransferGateway) -> PayoutLedger:
    """A 9,000 usd payout whose transfer answer was lost: in flight, attempt 1."""
    gateway.fail_next(TransferOutcomeUnknown("timeout"))
    assert ledger.release_payment(release(SERVICE, amount=AMOUNT)).in_flight
    return ledger


def transfer_object(ledger: PayoutLedger, **changes: Any) -> dict[str, Any]:
    """The transfer Stripe would report for the claim, with ``changes``."""
    payout = ledger.get_payout(SERVICE)
    obj: dict[str, Any] = {
        "id": "tr_reported",
        "object": "transfer",
        "amount": payout.amount,
        "currency": payout.currency,
        "destination": payout.destination_account,
        "transfer_group": payout.transfer_group,
        "metadata": {
            "event_service_id": SERVICE,
            "payout_id": str(payout.id),
            "attempt": str(payout.attempt),
        },
        "amount_reversed": 0,
        "reversed": False,
    }
    metadata = changes.pop("metadata", {})
    obj.update(changes)
    obj["metadata"].update(metadata)
    return obj


def test_a_connected_accounts_transfer_does_not_settle_a_platform_payout(
    in_flight: PayoutLedger, make_site: SiteFactory
) -> None:
    """The trial's case: 1 usd to another destination, metadata copied: recorded, no effect."""
    site = make_site()
    forged = transfer_object(in_flight, amount=100, destination="acct_mallory")
    event = make_event("transfer.created", forged, account="acct_mallory")

    response = site.deliver(event)

    assert response.status_code == 200
    assert response.json()["outcome"] == StripeEventOutcome.RECORDED
    assert in_flight.get_payout(SERVICE).status is PayoutStatus.IN_FLIGHT
    assert in_flight.has_stripe_event(event["id"])  # kept for the audit


def test_even_a_connected_accounts_exact_copy_of_the_transfer_settles_nothing(
    in_flight: PayoutLedger, make_site: SiteFactory
) -> None:
    site = make_site()
    event = make_event("transfer.created", transfer_object(in_flight), account="acct_other")

    assert site.deliver(event).json()["outcome"] == StripeEventOutcome.RECORDED
    assert in_flight.get_payout(SERVICE).status is PayoutStatus.IN_FLIGHT


@pytest.mark.parametrize(
    "changes",
    [
        {"amount": 100},
        {"currency": "eur"},
        {"destination": "acct_mallory"},
        {"metadata": {"attempt": "2"}},
        {"metadata": {"payout_id": "00000000-0000-0000-0000-000000000000"}},
    ],
    ids=["amount", "currency", "destination", "attempt", "payout_id"],
)
def test_a_platform_transfer_report_settles_only_what_was_claimed(
    in_flight: PayoutLedger, make_site: SiteFactory, changes: dict[str, Any]
) -> None:
    site = make_site()
    event = make_event("transfer.created", transfer_object(in_flight, **changes))

    assert site.deliver(event).json()["outcome"] == StripeEventOutcome.RECORDED
    assert in_flight.get_payout(SERVICE).status is PayoutStatus.IN_FLIGHT

    exact = make_event("transfer.created", transfer_object(in_flight, id="tr_exact"))
    assert site.deliver(exact).json()["outcome"] == StripeEventOutcome.APPLIED
    assert in_flight.get_payout(SERVICE).transfer_id == "tr_exact"


def test_a_connected_accounts_payment_is_not_the_platforms_capture(
    ledger: PayoutLedger, make_site: SiteFactory
) -> None:
    """Recorded for the audit; no CapturedPayment, and the host's callback is not called."""
    site = make_site()
    intent = payment_intent(event_service_id="es_1")
    event = make_event("payment_intent.succeeded", intent, account="acct_connected")

    response = site.deliver(event)

    assert response.status_code == 200
    assert response.json()["outcome"] == StripeEventOutcome.RECORDED
    assert ledger.captured_payment(intent["id"]) is None
    assert site.callbacks.payments == []
    platform = make_event("payment_intent.succeeded", payment_intent(event_service_id="es_1"))
    assert site.deliver(platform).json()["outcome"] == StripeEventOutcome.APPLIED
    assert len(site.callbacks.payments) == 1


def test_a_connected_accounts_reversal_report_is_not_recorded_as_a_reversal(
    ledger: PayoutLedger, make_site: SiteFactory
) -> None:
    site = make_site()
    assert ledger.release_payment(release(SERVICE, amount=AMOUNT)).success
    payout = ledger.get_payout(SERVICE)
    reversed_obj = transfer_object(ledger, id=payout.transfer_id, amount_reversed=AMOUNT)
    reversed_obj["metadata"]["attempt"] = str(payout.attempt)

    event = make_event("transfer.reversed", reversed_obj, account="acct_mallory")

    assert site.deliver(event).json()["outcome"] == StripeEventOutcome.RECORDED
    assert ledger.get_payout(SERVICE).amount_reversed == 0
    platform = make_event("transfer.reversed", reversed_obj)
    assert site.deliver(platform).json()["outcome"] == StripeEventOutcome.APPLIED
    assert ledger.get_payout(SERVICE).status is PayoutStatus.REVERSED


def test_account_updated_still_reaches_the_host(
    ledger: PayoutLedger, make_site: SiteFactory
) -> None:
    """The Connect event the ledger asks for is a connected account's event by nature."""
    site = make_site()
    event = make_event(
        "account.updated", {"id": "acct_1", "payouts_enabled": True}, account="acct_1"
    )

    assert site.deliver(event).status_code == 200
    assert [a[:2] for a in site.callbacks.accounts] == [("acct_1", True)]


@pytest.mark.parametrize("account", [123, "", ["acct_1"], {"id": "acct_1"}])
def test_an_account_that_is_not_an_account_id_is_refused(
    ledger: PayoutLedger, account: object
) -> None:
    """A host calling the ledger directly cannot pass a connected event off as the platform's."""
    event = make_event("payment_intent.succeeded", payment_intent())
    event["account"] = account
    before = ledger.recorder.max_notification_id()

    with pytest.raises(ValueError, match="account"):
        ledger.record_stripe_event(event=event, raw_body=b"{}", headers={})
    assert ledger.recorder.max_notification_id() == before


# -- the other mode --------------------------------------------------------------


def live_site(make_ledger: Any, make_site: SiteFactory) -> Site:
    live = make_ledger(
        gateway=StripeTransferGateway("sk_live_not_used", api_base="http://127.0.0.1:9")
    )
    assert live.livemode is True
    return make_site(sink=live)


@pytest.mark.parametrize(
    ("ledger_live", "event_live"),
    [(True, False), (False, True)],
    ids=["live-gets-test", "test-gets-live"],
)
def test_an_event_of_the_other_mode_is_refused_before_anything_runs(
    make_ledger: Any,
    make_site: SiteFactory,
    ledger: PayoutLedger,
    ledger_live: bool,
    event_live: bool,
) -> None:
    """A test-mode event at a live ledger (or the reverse): 400, nothing recorded, no callback."""
    site = live_site(make_ledger, make_site) if ledger_live else make_site()
    assert site.handler is not None
    sink: PayoutLedger = site.handler._ledger  # type: ignore[assignment]
    assert sink.livemode is ledger_live
    event = make_event("payment_intent.succeeded", payment_intent())
    event["livemode"] = event_live
    before = sink.recorder.max_notification_id()

    response = site.deliver(event)

    assert response.status_code == 400
    assert response.json() == {"error": "livemode_mismatch"}
    assert site.callbacks.payments == []
    assert sink.recorder.max_notification_id() == before
    from payout_ledger import LivemodeMismatchError

    with pytest.raises(LivemodeMismatchError, match="-mode event reached a"):
        sink.record_stripe_event(event=event, raw_body=b"{}", headers={})
    assert not sink.has_stripe_event(event["id"])


def test_the_test_gateways_and_keys_say_which_mode_they_are(make_ledger: Any) -> None:
    assert make_ledger().livemode is False  # the in-memory gateway is a test double
    key = "sk_test_not_used"
    test = make_ledger(gateway=StripeTransferGateway(key, api_base="http://127.0.0.1:9"))
    assert test.livemode is False
    assert make_ledger(stripe_enabled=False, gateway=None).livemode is False


def test_a_connected_accounts_test_event_at_a_live_endpoint_is_ignored_with_200(
    make_ledger: Any, make_site: SiteFactory
) -> None:
    """Stripe sends a live-connected account's test events to the live Connect endpoint."""
    site = live_site(make_ledger, make_site)
    sink: PayoutLedger = site.handler._ledger  # type: ignore[assignment]
    before = sink.recorder.max_notification_id()
    event = make_event(
        "account.updated", {"id": "acct_1", "payouts_enabled": True}, account="acct_1"
    )
    assert event["livemode"] is False

    response = site.deliver(event)

    assert response.status_code == 200
    assert response.json()["outcome"] == "ignored"
    assert site.callbacks.accounts == []
    assert sink.recorder.max_notification_id() == before
    receipt = sink.record_stripe_event(event=event, raw_body=b"{}", headers={})
    assert receipt.outcome.value == "ignored"
    assert not sink.has_stripe_event(event["id"])


def test_a_live_ledger_never_takes_unsigned_events_whatever_the_environment(
    make_ledger: Any, make_site: SiteFactory
) -> None:
    """A live key with environment left at development and no secret: every request 403."""
    live = make_ledger(
        gateway=StripeTransferGateway("sk_live_not_used", api_base="http://127.0.0.1:9")
    )
    site = make_site(sink=live, secrets=(), environment="development")
    event = make_event("payment_intent.succeeded", payment_intent())

    response = site.post(json.dumps(event).encode())

    assert response.status_code == 403
    assert response.json() == {"error": "webhook_secret_not_configured"}
    assert site.callbacks.payments == []
    assert not live.has_stripe_event(event["id"])

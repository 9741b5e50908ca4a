"""Charge-linked transfers and refunds after payout, through the stripe SDK over HTTP.

The fake Stripe keeps the platform's and each connected account's balance as
Stripe does: a transfer without ``source_transaction`` needs the platform's
available balance, one with it follows the charge; a reversal needs the
connected account's balance. At the end of each scenario Stripe holds exactly
the transfers and reversals intended, and the ledger, its audit and
reconcile agree with it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from payout_ledger import (
    PayoutLedger,
    PayoutStatus,
    ReleaseOutcome,
    ReversalOutcome,
    SourceTransactionError,
)
from payout_ledger.audit import audit_ledger
from payout_ledger.service.reconcile import reconcile
from payout_ledger.testing.fake_stripe import FakeStripe, faults
from tests.stripe.stripe_support import (
    AMOUNT,
    CURRENCY,
    DAY_AND_A_BIT,
    LedgerMaker,
    release_request,
    topics,
    transfer_posts,
    transfers_for,
)

ES = "es_refund"
REVERSALS = "/v1/transfers/*/reversals"


@pytest.fixture
def ledger(make_stripe_ledger: LedgerMaker, durable_store_url: str) -> PayoutLedger:
    return make_stripe_ledger(durable_store_url)


def paid_by_customer(fake: FakeStripe, amount: int = AMOUNT) -> dict[str, Any]:
    """A customer's PaymentIntent succeeded; its funds are not available yet."""
    intent = fake.succeed_payment_intent(amount, CURRENCY, transfer_group="order_42")
    fake.set_balance(CURRENCY, 0)
    return intent


def reversal_posts(fake: FakeStripe) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST" and r.path.endswith("/reversals")]


def reversals_at_stripe(fake: FakeStripe, event_service_id: str = ES) -> list[dict[str, Any]]:
    [transfer] = transfers_for(fake, event_service_id)
    client = fake.client()
    return [r.to_dict() for r in client.v1.transfers.reversals.list(transfer["id"]).data]


def deliver_stripe_events(ledger: PayoutLedger, fake: FakeStripe, event_type: str) -> None:
    """Hand the ledger every event of this type the fake emitted (a webhook would)."""
    for event in fake.events():
        if event["type"] == event_type:
            ledger.record_stripe_event(event=event, raw_body=json.dumps(event).encode(), headers={})


def assert_books_agree(ledger: PayoutLedger, fake: FakeStripe) -> None:
    report = audit_ledger(ledger)
    assert report.violations == []
    assert reconcile(ledger, event_service_ids=[ES]).mismatches == []
    [transfer] = transfers_for(fake, ES)
    assert ledger.get_payout(ES).amount_reversed == transfer["amount_reversed"]


# -- charge-linked transfers ---------------------------------------------------


def test_a_release_naming_the_charge_succeeds_while_the_available_balance_is_zero(
    ledger: PayoutLedger, fake: FakeStripe
) -> None:
    intent = paid_by_customer(fake)
    charge = intent["latest_charge"]

    without = ledger.release_payment(release_request("es_without_charge"))
    result = ledger.release_payment(
        {
            **release_request(ES),
            "source_transaction": charge,
            "transfer_group": "order_42",
            "description": "Catering, 30 November",
        }
    )

    assert without.outcome is ReleaseOutcome.FAILED
    assert without.error_code == "balance_insufficient"
    assert result.outcome is ReleaseOutcome.RELEASED
    [transfer] = transfers_for(fake, ES)
    assert transfer["source_transaction"] == charge
    assert transfer["transfer_group"] == "order_42"
    assert transfer["description"] == "Catering, 30 November"
    payout = ledger.get_payout(ES)
    assert (payout.source_transaction, payout.transfer_group) == (charge, "order_42")
    assert_books_agree(ledger, fake)


def test_a_release_naming_the_payment_intent_sends_its_latest_charge(
    ledger: PayoutLedger, fake: FakeStripe
) -> None:
    intent = paid_by_customer(fake)

    result = ledger.release_payment({**release_request(ES), "source_transaction": intent["id"]})

    assert result.outcome is ReleaseOutcome.RELEASED
    [post] = transfer_posts(fake, ES)
    assert post.params["source_transaction"] == intent["latest_charge"]


@pytest.mark.parametrize(
    ("charge_amount", "currency", "match"),
    [(AMOUNT - 1, CURRENCY, "at most 4999"), (AMOUNT, "eur", "in eur")],
)
def test_a_charge_that_cannot_fund_the_transfer_is_refused_before_anything_is_recorded(
    ledger: PayoutLedger, fake: FakeStripe, charge_amount: int, currency: str, match: str
) -> None:
    intent = fake.succeed_payment_intent(charge_amount, currency)

    with pytest.raises(SourceTransactionError, match=match):
        ledger.release_payment(
            {**release_request(ES), "source_transaction": intent["latest_charge"]}
        )

    assert ledger.find_payout(ES) is None
    assert transfer_posts(fake) == []


def test_an_unknown_charge_is_refused_before_anything_is_recorded(
    ledger: PayoutLedger, fake: FakeStripe
) -> None:
    with pytest.raises(SourceTransactionError, match="ch_doesnotexist"):
        ledger.release_payment({**release_request(ES), "source_transaction": "ch_doesnotexist"})

    assert ledger.find_payout(ES) is None
    assert transfer_posts(fake) == []


# -- refunds after payout ------------------------------------------------------


def test_refund_after_payout_full_partial_refused_for_balance_and_books_agree(
    ledger: PayoutLedger, fake: FakeStripe, account: str
) -> None:
    """Release; a partial refund; a refund the provider's balance cannot cover; the rest."""
    intent = paid_by_customer(fake)
    released = ledger.release_payment(
        {**release_request(ES), "source_transaction": intent["latest_charge"]}
    )
    assert released.outcome is ReleaseOutcome.RELEASED

    partial = ledger.reverse_payment(ES, 1500, reference="refund_1", reason="one guest fewer")
    assert partial.outcome is ReversalOutcome.REVERSED
    assert ledger.reverse_payment(ES, 1500, reference="refund_1").outcome is (
        ReversalOutcome.ALREADY_REVERSED
    )

    fake.set_account_balance(account, CURRENCY, 0)  # the provider was paid out meanwhile
    refused = ledger.reverse_payment(ES, reason="event cancelled")
    assert refused.outcome is ReversalOutcome.FAILED
    assert refused.error_code == "balance_insufficient"
    assert ledger.get_payout(ES).amount_reversed == 1500

    fake.set_account_balance(account, CURRENCY, 10_000)  # the provider topped up
    full = ledger.reverse_payment(ES, reason="event cancelled")
    assert full.outcome is ReversalOutcome.REVERSED
    assert full.amount == AMOUNT - 1500

    at_stripe = reversals_at_stripe(fake)
    assert sorted(r["amount"] for r in at_stripe) == [1500, AMOUNT - 1500]
    assert len(reversal_posts(fake)) == 3  # partial, refused, full: no retry sent twice
    assert ledger.get_payout(ES).status is PayoutStatus.REVERSED
    deliver_stripe_events(ledger, fake, "transfer.reversed")  # the webhooks add nothing
    assert ledger.get_payout(ES).amount_reversed == AMOUNT
    assert_books_agree(ledger, fake)


@pytest.mark.parametrize(
    "fault", [faults.drop_after_commit, faults.drop_before_commit], ids=["made", "not_made"]
)
def test_a_reversal_whose_response_is_lost_is_resumed_past_24_hours_once(
    ledger: PayoutLedger, fake: FakeStripe, fault: Any
) -> None:
    assert ledger.release_payment(release_request(ES)).outcome is ReleaseOutcome.RELEASED
    fake.inject(fault(), path=REVERSALS)

    lost = ledger.reverse_payment(ES, 2000, reference="refund_1")
    assert lost.outcome is ReversalOutcome.OUTCOME_UNKNOWN
    assert ledger.reversals_in_flight() == [ES]
    assert topics(ledger, ES)[-1] == "ReversalStarted"

    fake.clock.advance(DAY_AND_A_BIT)  # Stripe may have pruned the key
    [resumed] = ledger.resume_reversals_in_flight()

    assert resumed.outcome is ReversalOutcome.REVERSED
    assert [r["amount"] for r in reversals_at_stripe(fake)] == [2000]
    assert ledger.reversals_in_flight() == []
    deliver_stripe_events(ledger, fake, "transfer.reversed")
    assert_books_agree(ledger, fake)


def test_the_reversal_key_reaches_stripe_as_the_header(
    ledger: PayoutLedger, fake: FakeStripe
) -> None:
    ledger.release_payment(release_request(ES))

    ledger.reverse_payment(ES)

    [post] = reversal_posts(fake)
    assert post.idempotency_key == f"reverse_payment.attempt1:{ES}"
    assert "idempotency_key" not in post.params
    assert post.params["metadata"]["reference"] == "full"


def test_the_transfer_reversed_webhook_settles_a_reversal_whose_answer_was_lost(
    ledger: PayoutLedger, fake: FakeStripe
) -> None:
    """Stripe's report lists the attempt's reversal: no resume is needed, nothing is sent."""
    assert ledger.release_payment(release_request(ES)).outcome is ReleaseOutcome.RELEASED
    fake.inject(faults.drop_after_commit(), path=REVERSALS)
    assert ledger.reverse_payment(ES, 2000, reference="refund_1").in_flight
    posts = len(reversal_posts(fake))

    deliver_stripe_events(ledger, fake, "transfer.reversed")

    assert ledger.reversals_in_flight() == []
    assert topics(ledger, ES)[-2:] == ["TransferReversed", "ReversalSucceeded"]
    again = ledger.reverse_payment(ES, 2000, reference="refund_1")
    assert again.outcome is ReversalOutcome.ALREADY_REVERSED
    assert again.reversal_id == reversals_at_stripe(fake)[0]["id"]
    assert len(reversal_posts(fake)) == posts
    assert_books_agree(ledger, fake)

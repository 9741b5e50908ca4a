"""Verified Stripe events recorded once, with their effect on payouts, on every store."""

from __future__ import annotations

import json
from typing import Any

import pytest

from payout_ledger import (
    STRIPE_API_VERSION,
    InvalidRequestError,
    PayoutAggregate,
    PayoutLedger,
    PayoutStatus,
    TransferOutcomeUnknown,
)
from payout_ledger.domain.stripe_events import StripeEventOutcome, StripeEventRecord
from payout_ledger.testing import InMemoryTransferGateway, RecordedTransfer
from tests.support import release


def transfer_event(
    event_id: str, event_type: str, transfer: RecordedTransfer, amount_reversed: int = 0
) -> dict[str, Any]:
    obj = {**transfer.as_stripe().__dict__, "object": "transfer"}
    obj["metadata"] = dict(transfer.metadata)
    obj["amount_reversed"] = amount_reversed
    obj["reversed"] = amount_reversed >= transfer.amount
    return {"id": event_id, "object": "event", "type": event_type, "data": {"object": obj}}


def deliver(ledger: PayoutLedger, event: dict[str, Any]) -> StripeEventOutcome:
    event.setdefault("api_version", STRIPE_API_VERSION)  # as Stripe's events always have
    body = json.dumps(event).encode()
    receipt = ledger.record_stripe_event(
        event=event, raw_body=body, headers={"Stripe-Signature": "t=1,v1=abc"}
    )
    return receipt.outcome


def lost_response(ledger: PayoutLedger, gateway: InMemoryTransferGateway) -> RecordedTransfer:
    gateway.fail_next(TransferOutcomeUnknown("response lost"), after_commit=True)
    assert ledger.release_payment(release("es_1")).in_flight
    [transfer] = gateway.transfers
    return transfer


def test_transfer_created_settles_a_payout_whose_response_was_lost(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """transfer.created for an in-flight payout records TransferSucceeded and Released."""
    transfer = lost_response(ledger, gateway)

    outcome = deliver(ledger, transfer_event("evt_1", "transfer.created", transfer))

    assert outcome is StripeEventOutcome.APPLIED
    payout = ledger.get_payout("es_1")
    assert payout.status is PayoutStatus.RELEASED
    assert payout.transfer_id == transfer.transfer_id
    assert ledger.in_flight() == []
    assert gateway.calls == 1


def test_a_duplicate_delivery_has_no_second_effect(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """The same event id twice: recorded once, applied once."""
    transfer = lost_response(ledger, gateway)
    event = transfer_event("evt_1", "transfer.created", transfer)

    assert deliver(ledger, event) is StripeEventOutcome.APPLIED
    events_before = len(ledger.history("es_1"))
    assert deliver(ledger, event) is StripeEventOutcome.DUPLICATE
    assert len(ledger.history("es_1")) == events_before
    assert ledger.has_stripe_event("evt_1")


def test_a_reversal_that_arrives_before_its_transfer_is_handled(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """transfer.reversed first settles the payout, then records the reversal."""
    transfer = lost_response(ledger, gateway)

    reversed_first = transfer_event("evt_2", "transfer.reversed", transfer, amount_reversed=1000)
    assert deliver(ledger, reversed_first) is StripeEventOutcome.APPLIED
    late_created = transfer_event("evt_1", "transfer.created", transfer)
    assert deliver(ledger, late_created) is StripeEventOutcome.RECORDED

    payout = ledger.get_payout("es_1")
    assert payout.status is PayoutStatus.RELEASED
    assert payout.amount_reversed == 1000
    kinds = [type(e).__name__ for e in ledger.history("es_1")]
    assert kinds == ["PayoutStarted", "TransferSucceeded", "Released", "TransferReversed"]


def test_partial_reversals_add_up_in_any_order(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """Cumulative reversed amounts: a late smaller report changes nothing; full shows reversed."""
    ledger.release_payment(release("es_1", amount=5000))
    [transfer] = gateway.transfers

    deliver(ledger, transfer_event("evt_b", "transfer.reversed", transfer, amount_reversed=3000))
    late = transfer_event("evt_a", "transfer.reversed", transfer, amount_reversed=1000)
    assert deliver(ledger, late) is StripeEventOutcome.RECORDED
    assert ledger.get_payout("es_1").amount_reversed == 3000

    deliver(ledger, transfer_event("evt_c", "transfer.reversed", transfer, amount_reversed=5000))
    payout = ledger.get_payout("es_1")
    assert payout.status is PayoutStatus.REVERSED
    assert payout.amount_reversed == 5000
    assert ledger.release_payment(release("es_1", amount=5000)).already_released
    assert gateway.calls == 1


def test_payment_intent_succeeded_records_the_payment_as_captured(ledger: PayoutLedger) -> None:
    """The customer's payment is kept as a CapturedPayment, once."""
    event = {
        "id": "evt_pi",
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": "pi_123",
                "object": "payment_intent",
                "amount": 12000,
                "currency": "usd",
                "metadata": {"event_id": "ev_9"},
            }
        },
    }

    assert deliver(ledger, event) is StripeEventOutcome.APPLIED

    payment = ledger.captured_payment("pi_123")
    assert payment is not None
    assert (payment.amount, payment.currency, payment.metadata) == (
        12000,
        "usd",
        {"event_id": "ev_9"},
    )
    assert ledger.captured_payment("pi_other") is None


@pytest.mark.parametrize(
    "event",
    [
        {"id": "evt_u", "type": "customer.created", "data": {"object": {"id": "cus_1"}}},
        # The platform's own account: a connected account's update records payability.
        {
            "id": "evt_a",
            "type": "account.updated",
            "data": {"object": {"id": "acct_1", "payouts_enabled": True}},
        },
        {
            "id": "evt_t",
            "type": "transfer.created",
            "data": {"object": {"id": "tr_x", "amount": 5, "currency": "usd", "metadata": {}}},
        },
    ],
    ids=["unknown-type", "account-updated", "someone-elses-transfer"],
)
def test_events_without_a_ledger_effect_are_kept_for_audit(
    ledger: PayoutLedger, event: dict[str, Any]
) -> None:
    """Unknown types, account updates and foreign transfers are recorded, nothing else."""
    assert deliver(ledger, event) is StripeEventOutcome.RECORDED

    record = ledger.repository.get(StripeEventRecord.create_id(event["id"]))
    assert json.loads(record.raw_body) == event
    assert record.headers == {"stripe-signature": "t=1,v1=abc"}


@pytest.mark.parametrize(
    "event",
    [
        {"type": "transfer.created", "data": {"object": {}}},
        {"id": "evt_1", "data": {"object": {}}},
        {"id": "evt_1", "type": "transfer.created"},
        {"id": "evt_1", "type": "transfer.created", "data": {"object": {"id": "tr_1"}}},
        {"id": "evt_1", "type": "payment_intent.succeeded", "data": {"object": {"id": "pi"}}},
    ],
)
def test_malformed_events_are_refused_and_record_nothing(
    ledger: PayoutLedger, event: dict[str, Any]
) -> None:
    """Missing id, type, data.object or required fields: InvalidRequestError."""
    with pytest.raises(InvalidRequestError):
        deliver(ledger, event)
    assert not ledger.has_stripe_event("evt_1")


def test_a_report_of_another_transfer_does_not_change_a_paid_payout(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """Stripe reporting a different transfer for a paid payout is recorded, not applied."""
    ledger.release_payment(release("es_1"))
    [transfer] = gateway.transfers
    from dataclasses import replace

    other = replace(transfer, transfer_id="tr_other")

    outcome = deliver(ledger, transfer_event("evt_1", "transfer.created", other))

    assert outcome is StripeEventOutcome.RECORDED
    assert ledger.get_payout("es_1").transfer_id == transfer.transfer_id
    assert isinstance(ledger.history("es_1")[-1], PayoutAggregate.Released)

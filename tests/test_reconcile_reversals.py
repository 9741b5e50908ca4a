"""Reconciliation and reversals: the recorded transfer group, reversed amounts both ways,
and a platform reversal in flight reported for settling rather than as drift."""

from __future__ import annotations

from datetime import UTC, datetime

from payout_ledger import PayoutLedger, TransferOutcomeUnknown
from payout_ledger.service.reconcile import MismatchKind, reconcile
from payout_ledger.testing import InMemoryTransferGateway
from tests.support import release


def _paid(ledger: PayoutLedger, service: str = "es_1", **more: object) -> str:
    result = ledger.release_payment({**release(service), **more})
    assert result.success and result.transfer_id is not None
    return result.transfer_id


def test_a_payout_in_the_host_s_own_transfer_group_is_found(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """Transfers are listed by the group the payout recorded, not event_service:{id}."""
    _paid(ledger, transfer_group="order_42")

    report = reconcile(ledger, event_service_ids=["es_1"])

    assert report.ok, report.mismatches
    assert (report.payouts_checked, report.transfers_checked) == (1, 1)


def test_a_platform_reversal_agreeing_with_stripe_is_clean(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    _paid(ledger)
    assert ledger.reverse_payment("es_1", 1000, reference="r1").success

    report = reconcile(ledger, event_service_ids=["es_1"])

    assert report.ok and report.reversals_in_flight == []


def test_more_reversed_in_the_ledger_than_at_stripe_is_a_mismatch(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """A ReversalSucceeded Stripe never made: the ledger counts money back it does not have."""
    transfer_id = _paid(ledger)
    payout = ledger.get_payout("es_1")
    payout.start_reversal(reference="r1", amount=1000, reason="x", started_at=datetime.now(UTC))
    payout.record_reversal_success(reversal_id="trr_forged", request_id=None)
    ledger.save(payout)

    report = reconcile(ledger, event_service_ids=["es_1"])

    assert [(m.kind, m.transfer_id, m.ledger, m.stripe) for m in report.mismatches] == [
        (MismatchKind.REVERSED_IN_LEDGER_ONLY, transfer_id, 1000, 0)
    ]


def test_more_reversed_at_stripe_is_still_the_reversed_mismatch(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    transfer_id = _paid(ledger)
    gateway.reverse(transfer_id, 300)

    report = reconcile(ledger, since=datetime(2000, 1, 1, tzinfo=UTC))

    assert [(m.kind, m.ledger, m.stripe) for m in report.mismatches] == [
        (MismatchKind.REVERSED, 0, 300)
    ]


def test_a_reversal_in_flight_is_reported_for_settling_not_as_drift(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """Made at Stripe (response lost) or not made yet: both agree with the claim."""
    _paid(ledger)
    _paid(ledger, "es_2")
    gateway.fail_next(TransferOutcomeUnknown("lost"), after_commit=True)
    assert ledger.reverse_payment("es_1", 700, reference="r1").in_flight  # made at Stripe
    gateway.fail_next(TransferOutcomeUnknown("timeout"))
    assert ledger.reverse_payment("es_2", 700, reference="r2").in_flight  # not made

    report = reconcile(ledger, event_service_ids=["es_1", "es_2"])

    assert report.ok, report.mismatches
    assert [(m.kind, m.event_service_id, m.stripe) for m in report.reversals_in_flight] == [
        (MismatchKind.REVERSAL_IN_FLIGHT, "es_1", 700),
        (MismatchKind.REVERSAL_IN_FLIGHT, "es_2", 0),
    ]
    assert report.reversals_in_flight[0].ledger["reference"] == "r1"
    assert report.as_dict()["reversals_in_flight"][1]["event_service_id"] == "es_2"


def test_stripe_above_what_a_reversal_in_flight_explains_is_a_mismatch(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    transfer_id = _paid(ledger)
    gateway.fail_next(TransferOutcomeUnknown("lost"), after_commit=True)
    assert ledger.reverse_payment("es_1", 700, reference="r1").in_flight
    gateway.reverse(transfer_id, 100)  # someone else took 100 more back

    report = reconcile(ledger, event_service_ids=["es_1"])

    assert [(m.kind, m.ledger, m.stripe) for m in report.mismatches] == [
        (MismatchKind.REVERSED, 0, 800)
    ]
    assert report.reversals_in_flight == []

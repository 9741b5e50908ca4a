"""Reversals started by the platform: exactly once, never more than was transferred.

On every store, with the in-memory gateway (the same rules run over HTTP
against the fake Stripe in tests/stripe/test_connect_refunds.py).
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from payout_ledger import (
    ConfigurationError,
    InvalidRequestError,
    Money,
    PayoutLedger,
    PayoutNotFoundError,
    PayoutStatus,
    ReversalConflictError,
    ReversalOutcome,
    ReversalRefusedError,
    TransferNotExecuted,
    TransferOutcomeUnknown,
    TransferRequest,
    TransferResult,
)
from payout_ledger.domain.payout import reversal_idempotency_key
from payout_ledger.service.ports import ReversalCreated, ReversalRequest
from payout_ledger.testing import InMemoryTransferGateway
from tests.conftest import DURABLE_STORES, LedgerFactory
from tests.support import release
from tests.test_stripe_events import deliver, transfer_event

ES = "es_1"


def topics(ledger: PayoutLedger) -> list[str]:
    return [type(e).__name__ for e in ledger.history(ES)]


@pytest.fixture
def paid(ledger: PayoutLedger) -> PayoutLedger:
    assert ledger.release_payment(release(ES)).success
    return ledger


def test_a_partial_reversal_is_made_once_and_a_retry_with_its_reference_sends_nothing(
    paid: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    first = paid.reverse_payment(ES, 1000, reference="refund_1", reason="customer refund")
    again = paid.reverse_payment(ES, 1000, reference="refund_1")

    assert first.outcome is ReversalOutcome.REVERSED
    assert first.attempt == 1
    assert (
        first.idempotency_key == reversal_idempotency_key(ES, 1) == "reverse_payment.attempt1:es_1"
    )
    assert first.amount_reversed == 1000
    assert again.outcome is ReversalOutcome.ALREADY_REVERSED
    assert again.reversal_id == first.reversal_id
    assert gateway.reversal_calls == 1
    [reversal] = gateway.reversals
    assert reversal.amount == 1000
    assert reversal.metadata["reference"] == "refund_1"
    assert reversal.metadata["reason"] == "customer refund"
    assert topics(paid)[-2:] == ["ReversalStarted", "ReversalSucceeded"]
    assert paid.get_payout(ES).status is PayoutStatus.RELEASED


def test_a_full_reversal_takes_the_rest_and_marks_the_payout_reversed(
    paid: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    paid.reverse_payment(ES, 2000, reference="refund_1")

    full = paid.reverse_payment(ES)

    assert full.outcome is ReversalOutcome.REVERSED
    assert full.reference == "full"
    assert full.amount == 3000
    assert full.amount_reversed == 5000
    assert paid.get_payout(ES).status is PayoutStatus.REVERSED
    assert paid.reverse_payment(ES).outcome is ReversalOutcome.ALREADY_REVERSED
    assert gateway.transfers[0].amount_reversed == 5000
    assert gateway.reversal_calls == 2


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"amount": 1000}, ReversalRefusedError),  # partial without a reference
        ({"amount": 5001, "reference": "r"}, ReversalRefusedError),  # more than transferred
        ({"amount": 0, "reference": "r"}, InvalidRequestError),
        ({"amount": -5, "reference": "r"}, InvalidRequestError),
        ({"amount": True, "reference": "r"}, InvalidRequestError),
        ({"amount": Money(100, "eur"), "reference": "r"}, ReversalRefusedError),
        ({"amount": 100, "reference": "has space"}, InvalidRequestError),
        ({"reason": ""}, InvalidRequestError),
        ({"reason": "bad\nline"}, InvalidRequestError),
        ({"reason": "x" * 501}, InvalidRequestError),
    ],
)
def test_a_reversal_the_ledger_will_not_ask_for_records_and_sends_nothing(
    paid: PayoutLedger, gateway: InMemoryTransferGateway, kwargs: dict[str, object], error: type
) -> None:
    before = topics(paid)

    with pytest.raises(error):
        paid.reverse_payment(ES, **kwargs)  # type: ignore[arg-type]

    assert topics(paid) == before
    assert gateway.reversal_calls == 0


def test_an_unpaid_or_unknown_payout_cannot_be_reversed(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    with pytest.raises(PayoutNotFoundError):
        ledger.reverse_payment(ES)
    gateway.fail_next(TransferOutcomeUnknown("lost"))
    assert ledger.release_payment(release(ES)).in_flight

    with pytest.raises(ReversalRefusedError, match="not paid"):
        ledger.reverse_payment(ES)

    assert topics(ledger) == ["PayoutStarted"]
    assert gateway.reversal_calls == 0


def test_a_reference_reused_for_another_amount_is_a_conflict(paid: PayoutLedger) -> None:
    paid.reverse_payment(ES, 1000, reference="refund_1")

    with pytest.raises(ReversalConflictError) as raised:
        paid.reverse_payment(ES, 1500, reference="refund_1")

    assert (raised.value.recorded, raised.value.requested) == (1000, 1500)


def test_a_refusal_for_balance_is_a_recorded_failure_and_a_new_attempt_gets_a_new_key(
    paid: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    gateway.decline_next("balance_insufficient", "Insufficient funds in the connected account")

    refused = paid.reverse_payment(ES, 1000, reference="refund_1")

    assert refused.outcome is ReversalOutcome.FAILED
    assert refused.error_code == "balance_insufficient"
    assert not refused.success
    assert topics(paid)[-2:] == ["ReversalStarted", "ReversalFailed"]
    assert paid.get_payout(ES).amount_reversed == 0

    retried = paid.reverse_payment(ES, 1000, reference="refund_1")

    assert retried.outcome is ReversalOutcome.REVERSED
    assert retried.idempotency_key == "reverse_payment.attempt2:es_1"
    assert [r.amount for r in gateway.reversals] == [1000]


@pytest.mark.parametrize("after_commit", [True, False], ids=["made", "not_made"])
def test_an_unknown_outcome_stays_in_flight_and_a_resume_never_reverses_twice(
    paid: PayoutLedger, gateway: InMemoryTransferGateway, after_commit: bool
) -> None:
    gateway.fail_next(TransferOutcomeUnknown("response lost"), after_commit=after_commit)

    lost = paid.reverse_payment(ES, 1000, reference="refund_1")

    assert lost.outcome is ReversalOutcome.OUTCOME_UNKNOWN
    assert paid.reversals_in_flight() == [ES]
    other = paid.reverse_payment(ES, 500, reference="refund_2")
    assert other.outcome is ReversalOutcome.IN_PROGRESS
    gateway.forget_keys()  # past Stripe's 24 hours: the key no longer protects

    [resumed] = paid.resume_reversals_in_flight()

    assert resumed.outcome is ReversalOutcome.REVERSED
    assert resumed.detail == ("found at Stripe" if after_commit else "retried with the same key")
    assert [r.amount for r in gateway.reversals] == [1000]
    assert paid.reversals_in_flight() == []
    assert paid.get_payout(ES).amount_reversed == 1000


def test_a_retry_with_the_same_reference_resumes_the_reversal_in_flight(
    paid: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    gateway.fail_next(TransferOutcomeUnknown("response lost"), after_commit=True)
    assert paid.reverse_payment(ES, 1000, reference="refund_1").in_flight

    again = paid.reverse_payment(ES, 1000, reference="refund_1")

    assert again.outcome is ReversalOutcome.REVERSED
    assert again.detail == "found at Stripe"
    assert len(gateway.reversals) == 1


def test_a_rate_limited_reversal_is_not_executed_and_stays_in_flight(
    paid: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    gateway.fail_next(TransferNotExecuted("rate limited", code="rate_limit"))

    limited = paid.reverse_payment(ES)

    assert limited.outcome is ReversalOutcome.NOT_EXECUTED
    assert paid.reversals_in_flight() == [ES]
    assert paid.resume_reversal(ES).outcome is ReversalOutcome.REVERSED
    assert paid.get_payout(ES).status is PayoutStatus.REVERSED


@pytest.mark.parametrize("store_url", DURABLE_STORES, indirect=True)
def test_concurrent_reversals_claim_one_at_a_time_and_never_over_reverse(
    make_ledger: LedgerFactory,
) -> None:
    slow = InMemoryTransferGateway(latency=0.05)
    ledgers = [make_ledger(gateway=slow) for _ in range(6)]
    assert ledgers[0].release_payment(release(ES)).success
    barrier = threading.Barrier(len(ledgers))
    outcomes: Counter[ReversalOutcome] = Counter()
    lock = threading.Lock()

    def reverse(i: int) -> None:
        barrier.wait()
        result = ledgers[i].reverse_payment(ES, 2000, reference=f"refund_{i}")
        with lock:
            outcomes[result.outcome] += 1

    threads = [threading.Thread(target=reverse, args=(i,)) for i in range(len(ledgers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert outcomes[ReversalOutcome.REVERSED] >= 1
    assert sum(r.amount for r in slow.reversals) <= 5000
    assert len({r.metadata["reversal_attempt"] for r in slow.reversals}) == len(slow.reversals)
    assert ledgers[0].get_payout(ES).amount_reversed == sum(r.amount for r in slow.reversals)


def test_webhook_reports_and_the_platforms_reversals_add_up_to_stripes_total(
    paid: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """A transfer.reversed of the platform's own reversal never counts it twice."""
    [transfer] = gateway.transfers
    paid.reverse_payment(ES, 1000, reference="refund_1")
    deliver(paid, transfer_event("evt_1", "transfer.reversed", transfer, amount_reversed=1000))
    assert paid.get_payout(ES).amount_reversed == 1000

    # Someone reverses 500 in the dashboard; its report arrives before the next reversal.
    gateway.reverse(transfer.transfer_id, 500)
    deliver(paid, transfer_event("evt_2", "transfer.reversed", transfer, amount_reversed=1500))
    result = paid.reverse_payment(ES, 2000, reference="refund_2")

    assert result.amount_reversed == 3500
    assert gateway.transfers[0].amount_reversed == 3500
    # The platform's own report arriving late changes nothing.
    deliver(paid, transfer_event("evt_3", "transfer.reversed", transfer, amount_reversed=3500))
    assert paid.get_payout(ES).amount_reversed == 3500
    assert paid.reverse_payment(ES).amount == 1500


def test_a_full_reversal_reported_by_webhook_leaves_nothing_to_reverse(
    paid: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    [transfer] = gateway.transfers
    deliver(paid, transfer_event("evt_1", "transfer.reversed", transfer, amount_reversed=5000))

    assert paid.reverse_payment(ES).outcome is ReversalOutcome.ALREADY_REVERSED
    with pytest.raises(ReversalRefusedError):
        paid.reverse_payment(ES, 1, reference="r")
    assert gateway.reversal_calls == 0


class TransfersOnly:
    """A host's gateway that can transfer but not reverse."""

    def __init__(self) -> None:
        self.inner = InMemoryTransferGateway()

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        return self.inner.create_transfer(request)

    def list_transfers(self, **filters: object) -> list[object]:
        return list(self.inner.list_transfers(**filters))  # type: ignore[arg-type]


def test_a_gateway_that_cannot_reverse_is_refused_before_anything_is_recorded(
    make_ledger: LedgerFactory,
) -> None:
    ledger = make_ledger(gateway=TransfersOnly())
    assert ledger.release_payment(release(ES)).success

    with pytest.raises(ConfigurationError, match="ReversalGateway"):
        ledger.reverse_payment(ES)

    assert topics(ledger) == ["PayoutStarted", "TransferSucceeded", "Released"]


def test_without_stripe_a_reversal_is_simulated(make_ledger: LedgerFactory) -> None:
    ledger = make_ledger(stripe_enabled=False)
    assert ledger.release_payment(release(ES)).success

    result = ledger.reverse_payment(ES)

    assert result.outcome is ReversalOutcome.REVERSED
    assert result.reversal_id is not None and result.reversal_id.startswith("sim_trr_")
    assert ledger.get_payout(ES).status is PayoutStatus.REVERSED


def test_a_webhook_saved_while_the_reversal_was_sent_does_not_leave_it_in_flight(
    paid: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """The outcome's save loses to the webhook's report; it is recorded on top of it."""
    [transfer] = gateway.transfers
    create = gateway.create_reversal

    def create_then_webhook(request: ReversalRequest) -> ReversalCreated:
        made = create(request)
        event = transfer_event("evt_1", "transfer.reversed", transfer, amount_reversed=1000)
        deliver(paid, event)
        return made

    gateway.create_reversal = create_then_webhook  # type: ignore[method-assign]

    result = paid.reverse_payment(ES, 1000, reference="refund_1")

    assert result.outcome is ReversalOutcome.REVERSED
    assert paid.reversals_in_flight() == []
    assert paid.get_payout(ES).amount_reversed == 1000
    assert topics(paid)[-3:] == ["ReversalStarted", "TransferReversed", "ReversalSucceeded"]


@pytest.mark.parametrize(
    ("change", "settles"),
    [
        ({}, True),
        ({"reversal_attempt": "2"}, False),
        ({"payout_id": "00000000-0000-0000-0000-000000000000"}, False),
        ({"amount": 999}, False),
    ],
)
def test_a_transfer_reversed_report_settles_only_the_attempts_own_reversal(
    paid: PayoutLedger, gateway: InMemoryTransferGateway, change: dict[str, object], settles: bool
) -> None:
    [transfer] = gateway.transfers
    gateway.fail_next(TransferOutcomeUnknown("response lost"), after_commit=True)
    assert paid.reverse_payment(ES, 1000, reference="refund_1").in_flight
    [made] = gateway.reversals
    metadata = {**made.metadata}
    for key in ("reversal_attempt", "payout_id"):
        if key in change:
            metadata[key] = str(change[key])
    listed = {
        "id": made.id,
        "object": "transfer_reversal",
        "amount": change.get("amount", made.amount),
        "currency": made.currency,
        "transfer": made.transfer,
        "metadata": metadata,
    }
    event = transfer_event("evt_1", "transfer.reversed", transfer, amount_reversed=1000)
    event["data"]["object"]["reversals"] = {"object": "list", "data": [listed]}

    deliver(paid, event)

    assert (paid.reversals_in_flight() == []) is settles
    assert paid.get_payout(ES).amount_reversed == 1000
    assert gateway.reversal_calls == 1

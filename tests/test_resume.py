"""Settling in-flight payouts without a second transfer, at any age: Stripe is asked first."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from payout_ledger import (
    LedgerSettings,
    PayoutAggregate,
    PayoutLedger,
    PayoutStatus,
    ReleaseOutcome,
    TransferNotExecuted,
    TransferOutcomeUnknown,
)
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.conftest import LedgerFactory
from tests.support import ALICE, MovableClock, release

PAST_THE_WINDOW = 24 * 3600 + 60


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.mark.parametrize("after_commit", [False, True], ids=["never-reached", "response-lost"])
def test_resume_finds_the_transfer_or_retries_with_the_same_key(
    make_ledger: LedgerFactory,
    gateway: InMemoryTransferGateway,
    clock: MovableClock,
    after_commit: bool,
) -> None:
    """Stripe has the transfer: it is recorded; it has none: the same key makes it now."""
    ledger = make_ledger(clock=clock)
    gateway.fail_next(TransferOutcomeUnknown("timeout"), after_commit=after_commit)
    ledger.release_payment(release("es_1"))
    assert ledger.in_flight() == ["es_1"]
    clock.advance(3600)
    calls_before = gateway.calls

    [result] = ledger.resume_in_flight()

    assert result.outcome is ReleaseOutcome.RELEASED
    if after_commit:
        assert result.detail == "found at Stripe"
        assert gateway.calls == calls_before
    else:
        assert result.detail == "retried with the same key"
        assert gateway.calls == calls_before + 1
    [transfer] = gateway.transfers
    assert transfer.idempotency_key == "release_payment:es_1"
    assert ledger.get_payout("es_1").transfer_id == transfer.transfer_id
    assert ledger.in_flight() == []


def test_resume_past_the_window_finds_the_transfer_instead_of_paying_again(
    make_ledger: LedgerFactory, gateway: InMemoryTransferGateway, clock: MovableClock
) -> None:
    """After Stripe forgot the key, a retry would pay twice: the lookup records the transfer."""
    ledger = make_ledger(clock=clock)
    gateway.fail_next(TransferOutcomeUnknown("response lost"), after_commit=True)
    ledger.release_payment(release("es_1"))
    gateway.forget_keys()
    clock.advance(PAST_THE_WINDOW)
    calls_before = gateway.calls

    [result] = ledger.resume_in_flight()

    assert result.outcome is ReleaseOutcome.RELEASED
    assert result.detail == "found at Stripe"
    assert gateway.calls == calls_before
    assert len(gateway.transfers) == 1


def test_resume_past_the_key_window_keeps_the_attempt_and_its_key_when_stripe_has_nothing(
    make_ledger: LedgerFactory, gateway: InMemoryTransferGateway, clock: MovableClock
) -> None:
    """No transfer at Stripe, a day later: attempt 1's own key pays; no attempt 2, ever."""
    ledger = make_ledger(clock=clock)
    gateway.fail_next(TransferOutcomeUnknown("timeout"))
    ledger.release_payment(release("es_1"))
    clock.advance(PAST_THE_WINDOW)
    gateway.forget_keys()

    [result] = ledger.resume_in_flight()

    assert result.outcome is ReleaseOutcome.RELEASED and result.attempt == 1
    [transfer] = gateway.transfers
    assert transfer.idempotency_key == "release_payment:es_1"
    kinds = [type(e).__name__ for e in ledger.history("es_1")]
    assert kinds == ["PayoutStarted", "TransferSucceeded", "Released"]


def test_a_failed_lookup_leaves_the_payout_in_flight(
    make_ledger: LedgerFactory, gateway: InMemoryTransferGateway, clock: MovableClock
) -> None:
    """If Stripe cannot be asked, nothing is decided: an unanswered lookup proves nothing."""
    ledger = make_ledger(clock=clock)
    gateway.fail_next(TransferOutcomeUnknown("timeout"))
    ledger.release_payment(release("es_1"))
    clock.advance(PAST_THE_WINDOW)
    gateway.fail_next_lookup(TransferOutcomeUnknown("Stripe unreachable"))

    [result] = ledger.resume_in_flight()

    assert result.outcome is ReleaseOutcome.OUTCOME_UNKNOWN
    assert ledger.get_payout("es_1").status is PayoutStatus.IN_FLIGHT
    assert gateway.transfers == []


def test_resume_of_a_rate_limited_release_sends_it_again(
    make_ledger: LedgerFactory, gateway: InMemoryTransferGateway
) -> None:
    """A request Stripe did not execute is sent again with its key."""
    ledger = make_ledger()
    gateway.fail_next(TransferNotExecuted("429", code="rate_limit"))
    ledger.release_payment(release("es_1"))

    [result] = ledger.resume_in_flight()

    assert result.outcome is ReleaseOutcome.RELEASED
    assert len(gateway.transfers) == 1


def test_resume_leaves_settled_payouts_alone(
    make_ledger: LedgerFactory, gateway: InMemoryTransferGateway
) -> None:
    """Released and failed payouts are not in flight; resume() of one changes nothing."""
    ledger = make_ledger()
    ledger.release_payment(release("es_paid"))
    gateway.decline_next()
    ledger.release_payment(release("es_declined"))

    assert ledger.in_flight() == []
    assert ledger.resume_in_flight() == []
    assert ledger.resume("es_paid").detail == "nothing in flight"
    assert gateway.calls == 2


def test_concurrent_resumers_past_the_window_make_one_transfer(
    durable_store_url: str, gateway: InMemoryTransferGateway, clock: MovableClock
) -> None:
    """Eight resumers (own ledgers, one store) race, each asking Stripe first: one transfer."""
    ledgers = [
        PayoutLedger(
            settings=LedgerSettings(store_url=durable_store_url),
            providers=InMemoryProviderDirectory([ALICE]),
            gateway=gateway,
            clock=clock,
        )
        for _ in range(8)
    ]
    gateway.fail_next(TransferOutcomeUnknown("timeout"))
    ledgers[0].release_payment(release("es_1"))
    clock.advance(PAST_THE_WINDOW)
    gateway.latency = 0.05
    barrier = threading.Barrier(len(ledgers))
    outcomes: list[ReleaseOutcome] = []
    errors: list[BaseException] = []

    def resume(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            outcomes.append(ledgers[i].resume("es_1").outcome)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=resume, args=(i,)) for i in range(len(ledgers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for made in ledgers:
        made.close()

    assert errors == []
    assert len(gateway.transfers) == 1
    assert gateway.transfers[0].idempotency_key == "release_payment:es_1"
    assert outcomes.count(ReleaseOutcome.RELEASED) >= 1
    assert set(outcomes) <= {ReleaseOutcome.RELEASED, ReleaseOutcome.IN_PROGRESS}


def test_one_payout_that_cannot_be_resumed_does_not_stop_the_others(
    make_ledger: LedgerFactory, gateway: InMemoryTransferGateway
) -> None:
    """A claim without a destination is reported; the payouts around it are settled."""
    ledger = make_ledger()
    gateway.fail_next(TransferOutcomeUnknown("timeout"), times=2)
    ledger.release_payment(release("es_a"))
    broken = PayoutAggregate.start(
        event_service_id="es_b",
        provider_id="prov_alice",
        payee_user_id="user_alice",
        destination_account=None,
        amount=5000,
        currency="usd",
        started_at=datetime.now(UTC),
    )
    ledger.save(broken)
    ledger.release_payment(release("es_c"))
    assert ledger.in_flight() == ["es_a", "es_b", "es_c"]

    results = {r.event_service_id: r for r in ledger.resume_in_flight()}

    assert results["es_a"].outcome is ReleaseOutcome.RELEASED
    assert results["es_c"].outcome is ReleaseOutcome.RELEASED
    assert results["es_b"].outcome is ReleaseOutcome.OUTCOME_UNKNOWN
    assert results["es_b"].error_code == "cannot_resume"
    assert "without a connected account" in (results["es_b"].error_message or "")
    assert ledger.in_flight() == ["es_b"]
    assert len(gateway.transfers) == 2


class OthersActWhileAsked:
    """A resumer's gateway: while it asks Stripe, other processes settle the payout."""

    def __init__(self, inner: InMemoryTransferGateway, meanwhile: Any) -> None:
        self.inner = inner
        self.meanwhile = meanwhile

    def create_transfer(self, request: Any) -> Any:
        return self.inner.create_transfer(request)

    def list_transfers(self, **filters: Any) -> Any:
        self.meanwhile()
        return self.inner.list_transfers(**filters)


def test_a_stale_resumer_answers_what_the_store_says_after_its_lookup(
    durable_store_url: str, gateway: InMemoryTransferGateway
) -> None:
    """Attempt 1 failed and attempt 2 was paid while this resume asked Stripe: not unknown."""

    def ledger_with(gateway_: Any) -> PayoutLedger:
        return PayoutLedger(
            settings=LedgerSettings(store_url=durable_store_url),
            providers=InMemoryProviderDirectory([ALICE]),
            gateway=gateway_,
        )

    others = ledger_with(gateway)
    gateway.fail_next(TransferOutcomeUnknown("timeout"))
    others.release_payment(release("es_1"))

    def meanwhile() -> None:
        gateway.decline_next()
        assert others.resume("es_1").outcome is ReleaseOutcome.FAILED
        assert others.release_payment(release("es_1")).outcome is ReleaseOutcome.RELEASED

    stale = ledger_with(OthersActWhileAsked(gateway, meanwhile))

    [result] = stale.resume_in_flight()

    assert result.outcome is ReleaseOutcome.RELEASED, result
    assert result.attempt == 2 and result.detail == "settled meanwhile"
    assert len(gateway.transfers) == 1
    others.close()
    stale.close()

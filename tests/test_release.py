"""The seed's release rules (Phase 1 and Phase 3), on every store."""

from __future__ import annotations

import pytest

from payout_ledger import (
    ConfigurationError,
    LedgerSettings,
    PayoutAggregate,
    PayoutLedger,
    PayoutNotFoundError,
    PayoutStatus,
    ProviderNotFoundError,
    ReleaseConflictError,
    ReleaseOutcome,
    ServiceProvider,
    TransferNotExecuted,
    TransferOutcomeUnknown,
)
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.conftest import LedgerFactory
from tests.support import ALICE, release

# Phase 1: the destination, onboarding and the payee.


def test_release_uses_the_providers_stripe_account_as_destination(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """The transfer goes to ServiceProvider.stripe_account_id, not the provider's id."""
    result = ledger.release_payment(release("es_1"))

    assert result.success and result.outcome is ReleaseOutcome.RELEASED
    [transfer] = gateway.transfers
    assert transfer.destination == "acct_alice"
    assert transfer.amount == 5000 and transfer.currency == "usd"
    assert result.transfer_id == transfer.transfer_id


def test_missing_stripe_account_returns_onboarding_required_without_a_transfer(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """No connected account: onboarding_required, no Stripe call, nothing recorded."""
    result = ledger.release_payment(release("es_1", provider_id="prov_bob"))

    assert not result.success
    assert result.onboarding_required
    assert gateway.calls == 0
    assert ledger.history("es_1") == []


def test_onboarding_later_lets_the_same_service_be_released(
    ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    providers: InMemoryProviderDirectory,
) -> None:
    """An onboarding-required answer does not block the release once onboarded."""
    assert ledger.release_payment(release("es_1", provider_id="prov_bob")).onboarding_required
    providers.add(ServiceProvider(id="prov_bob", user_id="user_bob", stripe_account_id="acct_bob"))

    result = ledger.release_payment(release("es_1", provider_id="prov_bob"))

    assert result.outcome is ReleaseOutcome.RELEASED
    assert [t.destination for t in gateway.transfers] == ["acct_bob"]


def test_payee_is_the_providers_user_id(ledger: PayoutLedger) -> None:
    """The payout's payee is ServiceProvider.user_id, recorded in its events."""
    ledger.release_payment(release("es_1"))

    payout = ledger.get_payout("es_1")
    started, _succeeded, released = ledger.history("es_1")
    assert payout.payee_user_id == "user_alice"
    assert isinstance(started, PayoutAggregate.PayoutStarted)
    assert started.payee_user_id == "user_alice"
    assert isinstance(released, PayoutAggregate.Released)
    assert released.payee_user_id == "user_alice"


# Phase 3: idempotency, in-flight duplicates and failures.


def test_transfer_is_sent_with_idempotency_key_release_payment_event_service_id(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """The first attempt's Stripe idempotency key is release_payment:{event_service_id}."""
    ledger.release_payment(release("3f2a9c1e-0000-4000-8000-000000000001"))

    [transfer] = gateway.transfers
    assert transfer.idempotency_key == "release_payment:3f2a9c1e-0000-4000-8000-000000000001"
    assert transfer.transfer_group == "event_service:3f2a9c1e-0000-4000-8000-000000000001"


def test_already_released_returns_idempotent_success_without_a_second_transfer(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """Releasing again answers already_released and never calls Stripe."""
    first = ledger.release_payment(release("es_1"))
    second = ledger.release_payment(release("es_1"))

    assert second.success and second.already_released
    assert second.transfer_id == first.transfer_id
    assert gateway.calls == 1
    assert len(ledger.history("es_1")) == 3


@pytest.mark.parametrize("window", [30.0, 0.0])
def test_a_first_release_claims_without_reading_and_a_rerelease_reads_once(
    make_ledger: LedgerFactory,
    gateway: InMemoryTransferGateway,
    monkeypatch: pytest.MonkeyPatch,
    window: float,
) -> None:
    """The claim is tried before any read; a refused claim hands back the stored payout."""
    ledger = make_ledger(payability_cache_seconds=window)
    reads: list[object] = []
    select_events = ledger.recorder.select_events

    def counting_select(*args: object, **kwargs: object) -> object:
        reads.append(args)
        return select_events(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ledger.recorder, "select_events", counting_select)
    # A new store records its mode with its first money event (one read, once).
    assert ledger.release_payment(release("es_0")).success
    reads.clear()

    # Is the provider's account known to be unpayable? Read once per window
    # (tests/test_payability_window.py), and with no window before every claim.
    account_reads = 0 if window else 1
    first = ledger.release_payment(release("es_1"))
    assert first.outcome is ReleaseOutcome.RELEASED and len(reads) == account_reads

    again = ledger.release_payment(release("es_1"))
    assert again.already_released and len(reads) == 2 * account_reads + 1
    assert gateway.calls == 2
    assert len(ledger.history("es_1")) == 3


def test_a_released_payout_answers_already_released_after_its_provider_lost_the_account(
    ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    providers: InMemoryProviderDirectory,
) -> None:
    """Onboarding is asked only of payouts still to pay, not of one already paid."""
    providers.add(ServiceProvider(id="prov_bob", user_id="user_bob", stripe_account_id="acct_bob"))
    assert ledger.release_payment(release("es_1", provider_id="prov_bob")).success
    providers.add(ServiceProvider(id="prov_bob", user_id="user_bob"))

    again = ledger.release_payment(release("es_1", provider_id="prov_bob"))

    assert again.already_released and gateway.calls == 1


def test_in_flight_release_rejects_a_duplicate(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """While an attempt has no outcome, another release is refused as in progress."""
    gateway.fail_next(TransferOutcomeUnknown("read timed out"))
    first = ledger.release_payment(release("es_1"))
    assert first.outcome is ReleaseOutcome.OUTCOME_UNKNOWN and first.in_flight

    duplicate = ledger.release_payment(release("es_1"))

    assert duplicate.in_progress and not duplicate.success
    assert gateway.calls == 1
    assert ledger.get_payout("es_1").status is PayoutStatus.IN_FLIGHT


def test_transfer_failure_leaves_the_service_releasable(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """A definite refusal records TransferFailed; the next release pays with a new key."""
    gateway.decline_next("balance_insufficient", "Insufficient funds")
    failed = ledger.release_payment(release("es_1"))

    assert failed.outcome is ReleaseOutcome.FAILED and not failed.success
    assert failed.error_code == "balance_insufficient"
    assert gateway.transfers == []
    assert ledger.get_payout("es_1").status is PayoutStatus.FAILED

    retried = ledger.release_payment(release("es_1"))

    assert retried.outcome is ReleaseOutcome.RELEASED
    [transfer] = gateway.transfers
    assert transfer.idempotency_key == "release_payment.attempt2:es_1"
    kinds = [type(e).__name__ for e in ledger.history("es_1")]
    assert kinds == [
        "PayoutStarted",
        "TransferFailed",
        "PayoutStarted",
        "TransferSucceeded",
        "Released",
    ]


def test_unknown_outcome_leaves_the_payout_in_flight(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """A timeout after Stripe committed is not recorded as a failure: money may have moved."""
    gateway.fail_next(TransferOutcomeUnknown("connection dropped"), after_commit=True)

    result = ledger.release_payment(release("es_1"))

    assert result.outcome is ReleaseOutcome.OUTCOME_UNKNOWN
    assert len(gateway.transfers) == 1
    assert [type(e).__name__ for e in ledger.history("es_1")] == ["PayoutStarted"]


def test_rate_limited_release_is_not_recorded_as_failed(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """A rate-limited call was not executed; the payout stays in flight for a retry."""
    gateway.fail_next(TransferNotExecuted("Too many requests", code="rate_limit"))

    result = ledger.release_payment(release("es_1"))

    assert result.outcome is ReleaseOutcome.NOT_EXECUTED and result.in_flight
    assert ledger.get_payout("es_1").status is PayoutStatus.IN_FLIGHT


@pytest.mark.parametrize(
    ("changed", "field"),
    [
        ({"amount": 4999}, "amount"),
        ({"currency": "eur"}, "currency"),
        ({"provider_id": "prov_carol"}, "provider_id"),
    ],
)
def test_rerelease_with_different_terms_is_refused(
    ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    providers: InMemoryProviderDirectory,
    changed: dict[str, object],
    field: str,
) -> None:
    """Another amount, currency or provider for a recorded service is a clear error."""
    providers.add(ServiceProvider(id="prov_carol", user_id="u_c", stripe_account_id="acct_c"))
    ledger.release_payment(release("es_1"))

    with pytest.raises(ReleaseConflictError) as caught:
        ledger.release_payment(release("es_1", **changed))  # type: ignore[arg-type]

    assert caught.value.field == field
    assert gateway.calls == 1
    assert len(ledger.history("es_1")) == 3


def test_unknown_provider_is_a_typed_error_and_records_nothing(
    ledger: PayoutLedger,
) -> None:
    """A provider id the directory does not know raises ProviderNotFoundError."""
    with pytest.raises(ProviderNotFoundError):
        ledger.release_payment(release("es_1", provider_id="prov_nobody"))
    assert ledger.history("es_1") == []


def test_history_and_state_of_an_unknown_service(ledger: PayoutLedger) -> None:
    """history() of an unknown service is empty; get_payout() raises PayoutNotFoundError."""
    assert ledger.history("es_never") == []
    with pytest.raises(PayoutNotFoundError):
        ledger.get_payout("es_never")


def test_history_is_typed_and_ordered(ledger: PayoutLedger) -> None:
    """history() returns the payout's domain events, oldest first, with audit fields."""
    ledger.release_payment(release("es_1", amount=1234, currency="eur"))

    started, succeeded, released = ledger.history("es_1")

    assert isinstance(started, PayoutAggregate.PayoutStarted)
    assert (started.amount, started.currency, started.attempt) == (1234, "eur", 1)
    assert started.destination_account == "acct_alice"
    assert started.provider_id == "prov_alice"
    assert isinstance(succeeded, PayoutAggregate.TransferSucceeded)
    assert succeeded.transfer_id == released.transfer_id  # type: ignore[attr-defined]
    assert started.timestamp <= succeeded.timestamp <= released.timestamp
    assert [e.originator_version for e in (started, succeeded, released)] == [1, 2, 3]


def test_stripe_disabled_simulates_transfers_and_needs_no_account(
    make_ledger: object,
) -> None:
    """stripe_enabled=False (development): no gateway call, simulated transfer recorded."""
    gateway = InMemoryTransferGateway()
    ledger = make_ledger(stripe_enabled=False, gateway=gateway)  # type: ignore[operator]

    result = ledger.release_payment(release("es_1", provider_id="prov_bob"))

    assert result.outcome is ReleaseOutcome.RELEASED
    assert result.transfer_id.startswith("sim_")
    assert gateway.calls == 0
    succeeded = ledger.history("es_1")[1]
    assert succeeded.simulated is True


def test_stripe_disabled_is_refused_in_production(store_url: str) -> None:
    """Simulated transfers can never be configured in production."""
    settings = LedgerSettings(store_url=store_url, environment="production", stripe_enabled=False)
    with pytest.raises(ConfigurationError):
        PayoutLedger(settings=settings, providers=InMemoryProviderDirectory([ALICE]))


def test_replayed_state_equals_live_state(
    make_ledger: object, gateway: InMemoryTransferGateway
) -> None:
    """A second ledger on the same store rebuilds the same payout from the log."""
    live = make_ledger()  # type: ignore[operator]
    gateway.decline_next()
    live.release_payment(release("es_1"))
    live.release_payment(release("es_1"))
    before = vars(live.get_payout("es_1")).copy()

    if live.settings.store_url == "memory://":
        replayed = live.repository.get(live.payout_id("es_1"))
    else:
        replayed = make_ledger().get_payout("es_1")  # type: ignore[operator]

    assert {k: v for k, v in vars(replayed).items() if k != "_pending_events"} == {
        k: v for k, v in before.items() if k != "_pending_events"
    }

"""How long a release trusts that a connected account is payable without reading it again.

A release to an account known to be unpayable is answered without a claim or a
request to Stripe; knowing it costs a read of the account's record. A payable
(or never reported) account is read once per ``payability_cache_seconds`` by a
ledger; what this ledger records about the account is seen by its next
release, what another ledger (another process's) records within the window. The worst a stale
"payable" can do is what happens for an account the ledger knows nothing of:
one request that Stripe refuses, recorded with the account's report. An
unpayable account is read by every release, so it is paid as soon as it can be.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from payout_ledger import ConfigurationError, LedgerSettings, PayoutLedger, ReleaseOutcome
from payout_ledger.domain.account import ConnectedAccount
from payout_ledger.service import payable_accounts
from payout_ledger.testing import InMemoryTransferGateway
from tests.conftest import DURABLE_STORES, LedgerFactory
from tests.support import release
from tests.test_payability import ACCOUNT, account_event, deliver

ACCOUNT_ID = ConnectedAccount.create_id(ACCOUNT)
WINDOW = 30.0


class StepClock:
    """The real time; a monotonic clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.elapsed = 0.0

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return self.elapsed


def account_reads(ledger: PayoutLedger, monkeypatch: pytest.MonkeyPatch) -> list[UUID]:
    """Every read of the account's record from the store, as it happens."""
    reads: list[UUID] = []
    recorder = ledger.recorder
    select = recorder.select_events

    def counted(originator_id: Any, *args: Any, **kwargs: Any) -> Any:
        if originator_id == ACCOUNT_ID:
            reads.append(originator_id)
        return select(originator_id, *args, **kwargs)

    monkeypatch.setattr(recorder, "select_events", counted)
    return reads


def test_the_default_window_is_thirty_seconds() -> None:
    assert LedgerSettings().payability_cache_seconds == WINDOW


@pytest.mark.parametrize("seconds", [-1, 3601])
def test_a_window_out_of_range_is_refused(seconds: float) -> None:
    with pytest.raises(ConfigurationError, match="payability_cache_seconds"):
        LedgerSettings(payability_cache_seconds=seconds).check()


@pytest.mark.parametrize("window", [0.0, 1.0, WINDOW, 3600.0])
def test_a_payable_account_is_read_once_per_window(
    make_ledger: LedgerFactory, monkeypatch: pytest.MonkeyPatch, window: float
) -> None:
    clock = StepClock()
    ledger = make_ledger(clock=clock, payability_cache_seconds=window)
    deliver(ledger, account_event(transfers="active"))
    reads = account_reads(ledger, monkeypatch)

    for i in range(4):
        assert ledger.release_payment(release(f"es_{i}")).success
        clock.elapsed += window / 4
    assert len(reads) == (4 if window == 0 else 1)

    clock.elapsed = window + 0.001  # the window is over: read again, once
    for i in range(4, 6):
        assert ledger.release_payment(release(f"es_{i}")).success
    assert len(reads) == (6 if window == 0 else 2)


def test_an_account_never_reported_is_read_once_per_window(
    make_ledger: LedgerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = StepClock()
    ledger = make_ledger(clock=clock)
    reads = account_reads(ledger, monkeypatch)

    for i in range(3):
        assert ledger.release_payment(release(f"es_{i}")).success

    assert len(reads) == 1
    assert ledger.account_payability(ACCOUNT) is None  # the public read always reads
    assert len(reads) == 2


def _report_by_account_updated(ledger: PayoutLedger, gateway: InMemoryTransferGateway) -> None:
    deliver(ledger, account_event(transfers="inactive"))
    gateway.set_account(ACCOUNT, transfers="inactive")


def _report_by_sync(ledger: PayoutLedger, gateway: InMemoryTransferGateway) -> None:
    gateway.set_account(ACCOUNT, transfers="inactive")
    assert not ledger.sync_account(ACCOUNT).payable


def _report_by_refusal(ledger: PayoutLedger, gateway: InMemoryTransferGateway) -> None:
    gateway.set_account(ACCOUNT, transfers="inactive")
    result = ledger.release_payment(release("es_refused"))
    assert result.outcome is ReleaseOutcome.PROVIDER_ACTION_REQUIRED


@pytest.mark.parametrize(
    "report", [_report_by_account_updated, _report_by_sync, _report_by_refusal]
)
def test_what_this_ledger_records_is_seen_by_its_next_release(
    make_ledger: LedgerFactory, gateway: InMemoryTransferGateway, report: Any
) -> None:
    ledger = make_ledger(clock=StepClock())
    assert ledger.release_payment(release("es_1")).success  # payable: remembered
    report(ledger, gateway)
    calls, stored = gateway.calls, ledger.recorder.max_notification_id()

    result = ledger.release_payment(release("es_2"))

    assert result.outcome is ReleaseOutcome.PROVIDER_ACTION_REQUIRED
    assert gateway.calls == calls
    assert ledger.recorder.max_notification_id() == stored


@pytest.fixture(params=DURABLE_STORES)
def two_ledgers(request: pytest.FixtureRequest, providers: Any, gateway: Any) -> Any:
    """Two processes on one store: ``ours`` releases on a clock the test moves,
    ``theirs`` records what it hears of the account."""
    store_url = request.getfixturevalue(f"{request.param}_url")
    clock = StepClock()
    made = [
        PayoutLedger(
            settings=LedgerSettings(store_url=store_url),
            providers=providers,
            gateway=gateway,
            **wiring,
        )
        for wiring in ({"clock": clock}, {})
    ]
    yield made[0], made[1], clock
    for ledger in made:
        ledger.close()


def reported_elsewhere(two_ledgers: Any) -> tuple[PayoutLedger, StepClock]:
    """``ours`` read the account as payable; then ``theirs`` recorded it unpayable."""
    ours, theirs, clock = two_ledgers
    assert ours.release_payment(release("es_1")).success
    deliver(theirs, account_event(transfers="inactive"))
    return ours, clock


def test_another_process_s_report_is_seen_once_the_window_is_over(
    two_ledgers: Any, gateway: InMemoryTransferGateway
) -> None:
    ours, clock = reported_elsewhere(two_ledgers)
    calls = gateway.calls

    clock.elapsed = WINDOW + 0.001
    result = ours.release_payment(release("es_2"))

    assert result.outcome is ReleaseOutcome.PROVIDER_ACTION_REQUIRED
    assert result.error_code == "transfers_capability_inactive"
    assert gateway.calls == calls
    assert ours.find_payout("es_2") is None


def test_within_the_window_a_stale_payable_costs_one_refused_request_recorded(
    two_ledgers: Any, gateway: InMemoryTransferGateway
) -> None:
    """What the ledger does for an account it knows nothing of."""
    ours, clock = reported_elsewhere(two_ledgers)
    gateway.set_account(ACCOUNT, transfers="inactive")  # Stripe refuses transfers to it
    calls = gateway.calls

    clock.elapsed = WINDOW - 1
    result = ours.release_payment(release("es_2"))

    assert result.outcome is ReleaseOutcome.PROVIDER_ACTION_REQUIRED
    assert gateway.calls == calls + 1 and not gateway.transfers[1:]
    assert ours.get_payout("es_2").failure_code == "insufficient_capabilities_for_transfer"
    # The refusal it recorded is seen at once; nothing more is sent.
    assert ours.release_payment(release("es_3")).provider_action_required
    assert gateway.calls == calls + 1


def test_an_unpayable_account_is_read_by_every_release(
    two_ledgers: Any, gateway: InMemoryTransferGateway
) -> None:
    """Paid as soon as another process hears that it can be."""
    ours, theirs, _ = two_ledgers
    deliver(theirs, account_event(transfers="inactive", created=1_700_000_000))
    assert ours.release_payment(release("es_1")).provider_action_required

    deliver(theirs, account_event(transfers="active", created=1_700_000_001))

    assert ours.release_payment(release("es_1")).success


def test_a_report_saved_between_a_release_s_read_and_its_remembering_is_not_forgotten(
    make_ledger: LedgerFactory,
    gateway: InMemoryTransferGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The release read "payable" just before this ledger saved "unpayable": what it
    read is used once (as any read a moment old), never remembered."""
    ledger = make_ledger(clock=StepClock())
    recorder = ledger.recorder
    select = recorder.select_events
    reported = threading.Event()

    def report_after_the_read(originator_id: Any, *args: Any, **kwargs: Any) -> Any:
        events = select(originator_id, *args, **kwargs)
        if originator_id == ACCOUNT_ID and not reported.is_set():
            reported.set()  # first: the report's own read of the account comes back here
            deliver(ledger, account_event(transfers="inactive"))
        return events

    monkeypatch.setattr(recorder, "select_events", report_after_the_read)
    assert ledger.release_payment(release("es_1")).success  # read before the report
    calls = gateway.calls

    assert ledger.release_payment(release("es_2")).provider_action_required
    assert gateway.calls == calls


def test_the_ledger_remembers_a_bounded_number_of_accounts(
    make_ledger: LedgerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(payable_accounts, "REMEMBERED_ACCOUNTS", 4)
    ledger = make_ledger(clock=StepClock())
    remembered = ledger._payable_accounts  # its size is what is tested

    for i in range(10):
        remembered.remember(f"acct_{i}", remembered.token())
        assert len(remembered) <= 4
    assert len(remembered) >= 2  # the newest are kept

"""Replay equals live: the log rebuilds every aggregate exactly as the commands left it."""

from __future__ import annotations

import copy
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payout_ledger import (
    LedgerSettings,
    PayoutLedger,
    TransferOutcomeUnknown,
)
from payout_ledger.audit import PayoutSummary, audit_ledger
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.audit.scenario import CAROL, release, run_scenario, transfer_event
from tests.audit.support import replay_all, state_of
from tests.support import ALICE


def capture_live(ledger: PayoutLedger, monkeypatch: pytest.MonkeyPatch) -> dict[UUID, Any]:
    """Copies of every aggregate as the commands left it, taken at each save."""
    live: dict[UUID, Any] = {}
    save = ledger.save

    def saving(*aggregates: Any, **kwargs: Any) -> Any:
        recordings = save(*aggregates, **kwargs)
        for aggregate in aggregates:
            live[aggregate.id] = copy.deepcopy(aggregate)
        return recordings

    monkeypatch.setattr(ledger, "save", saving)
    return live


def assert_replay_equals_live(ledger: PayoutLedger, live: dict[UUID, Any]) -> None:
    streamed = replay_all(ledger)
    assert set(streamed) == set(live)
    for aggregate_id, aggregate in live.items():
        expected = state_of(aggregate)
        assert state_of(streamed[aggregate_id]) == expected, aggregate_id
        assert state_of(ledger.repository.get(aggregate_id)) == expected, aggregate_id


def test_replaying_the_log_reproduces_every_aggregate_exactly(
    make_ledger: Any, gateway: InMemoryTransferGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folding the log in notification order, and loading by id, both equal the live state."""
    writer = make_ledger()
    live = capture_live(writer, monkeypatch)
    run_scenario(writer, gateway)
    writer.seal()

    reader = writer if writer.settings.store_url == "memory://" else make_ledger()

    assert_replay_equals_live(reader, live)


def test_the_audit_summaries_agree_with_the_replayed_payouts(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """Status, attempt, transfer and reversed amount: the audit's compact fold matches."""
    run_scenario(ledger, gateway)
    kept: dict[int, PayoutSummary] = {}

    audit_ledger(ledger, keep_summaries=kept.update)

    for summary in kept.values():
        payout = ledger.get_payout_by_id(summary.payout_id)
        assert summary.event_service_id == payout.event_service_id
        assert summary.status is payout.status
        assert summary.attempt == payout.attempt
        assert summary.transfer_id == payout.transfer_id
        assert summary.reversed == payout.amount_reversed
        assert summary.version == payout.version


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["release", "decline", "timeout", "lost", "reverse", "webhook"]),
        st.integers(min_value=0, max_value=3),
    ),
    max_size=25,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=OPERATIONS)
def test_random_histories_replay_to_the_live_state(
    operations: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Releases, refusals, lost responses, webhooks and reversals in any order replay exactly."""
    gateway = InMemoryTransferGateway()
    with PayoutLedger(
        settings=LedgerSettings(store_url="memory://"),
        providers=InMemoryProviderDirectory([ALICE, CAROL]),
        gateway=gateway,
    ) as ledger:
        live = capture_live(ledger, monkeypatch)
        for step, (operation, n) in enumerate(operations):
            service = f"es_{n}"
            request = release(service, provider_id="prov_carol" if n % 2 else "prov_alice")
            if operation == "decline":
                gateway.decline_next()
            elif operation == "timeout":
                gateway.fail_next(TransferOutcomeUnknown("timeout"))
            elif operation == "lost":
                gateway.fail_next(TransferOutcomeUnknown("lost"), after_commit=True)
            if operation in {"release", "decline", "timeout", "lost"}:
                ledger.release_payment(request)
                continue
            transfers = gateway.transfers_for(service)
            if not transfers:
                continue
            transfer = transfers[-1]
            if operation == "reverse" and transfer.amount_reversed < transfer.amount:
                transfer = gateway.reverse(transfer.transfer_id, 1000)
            event = transfer_event(
                f"evt_{step}", "transfer.updated", transfer, transfer.amount_reversed
            )
            ledger.record_stripe_event(event=event, raw_body=b"{}", headers={})

        assert_replay_equals_live(ledger, live)
        report = audit_ledger(ledger)
        assert report.ok
        assert audit_ledger(ledger, decode="mapper") == report

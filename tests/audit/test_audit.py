"""`payout-ledger audit`: replay every payout from the log and check the money rules.

Each rule is broken on purpose by a "buggy writer" that records events the
ledger's own commands would refuse (state forced past a guard, or an event
triggered directly), and the audit must name the offending event.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from typer.testing import CliRunner

from payout_ledger import (
    LedgerSettings,
    PayoutAggregate,
    PayoutLedger,
    PayoutStatus,
    TransferOutcomeUnknown,
)
from payout_ledger.audit import AuditReport, ViolationKind, audit_ledger
from payout_ledger.audit.replay import Decode
from payout_ledger.cli import app, audit_commands
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.audit.scenario import CAROL, plant_ghost_reversal, release, run_scenario
from tests.audit.support import RawStore, notification_ids
from tests.support import ALICE


@pytest.fixture
def durable_ledger(
    durable_store_url: str,
    providers: InMemoryProviderDirectory,
    gateway: InMemoryTransferGateway,
) -> Iterator[PayoutLedger]:
    """A ledger on SQLite or PostgreSQL, for tests that edit rows or run the command line."""
    with PayoutLedger(
        settings=LedgerSettings(store_url=durable_store_url), providers=providers, gateway=gateway
    ) as ledger:
        yield ledger


Planter = Callable[[PayoutLedger, InMemoryTransferGateway], tuple[str, int]]
"""Breaks one rule; returns the event service and the version of the offending event."""


def _paid(ledger: PayoutLedger, service: str) -> PayoutAggregate:
    assert ledger.release_payment(release(service)).success
    return ledger.get_payout(service)


def _in_flight(ledger: PayoutLedger, gateway: InMemoryTransferGateway, service: str) -> Any:
    gateway.fail_next(TransferOutcomeUnknown("timeout"))
    assert ledger.release_payment(release(service)).in_flight
    return ledger.get_payout(service)


def _failed(ledger: PayoutLedger, gateway: InMemoryTransferGateway, service: str) -> Any:
    gateway.decline_next()
    ledger.release_payment(release(service))
    payout = ledger.get_payout(service)
    assert payout.status is PayoutStatus.FAILED
    return payout


def plant_double_transfer(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    payout: Any = _paid(ledger, "es_v")
    payout.status = PayoutStatus.FAILED  # past the guard: a second attempt on a paid payout
    payout.start_next_attempt(
        payee_user_id=payout.payee_user_id,
        destination_account=payout.destination_account,
        started_at=datetime.now(UTC),
    )
    payout.record_transfer(transfer_id="tr_second", request_id=None)
    ledger.save(payout)
    return "es_v", payout.version - 1  # the second TransferSucceeded


def plant_transfer_id_reused(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    first = _paid(ledger, "es_first")
    payout = _in_flight(ledger, gateway, "es_v")
    assert first.transfer_id is not None
    payout.record_transfer(transfer_id=first.transfer_id, request_id=None)
    ledger.save(payout)
    return "es_v", payout.version - 1


def plant_release_without_transfer(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    payout = _in_flight(ledger, gateway, "es_v")
    payout.trigger_event(
        PayoutAggregate.Released,
        transfer_id="tr_ghost",
        amount=payout.amount,
        currency=payout.currency,
        payee_user_id=payout.payee_user_id,
    )
    ledger.save(payout)
    return "es_v", payout.version


def plant_reversal_exceeds_amount(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    payout = _paid(ledger, "es_v")
    assert payout.transfer_id is not None
    payout.record_reversal(
        transfer_id=payout.transfer_id, amount_reversed=payout.amount + 1, stripe_event_id=None
    )
    ledger.save(payout)
    return "es_v", payout.version


def plant_reversal_without_transfer(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    _failed(ledger, gateway, "es_v")
    return "es_v", plant_ghost_reversal(ledger, "es_v")


def plant_attempt_without_outcome(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    payout = _in_flight(ledger, gateway, "es_v")
    payout.status = PayoutStatus.FAILED  # past the guard: attempt 1 has no outcome
    payout.start_next_attempt(
        payee_user_id=payout.payee_user_id,
        destination_account=payout.destination_account,
        started_at=datetime.now(UTC),
    )
    ledger.save(payout)
    return "es_v", payout.version


def plant_outcome_without_attempt(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    payout = _failed(ledger, gateway, "es_v")
    payout.status = PayoutStatus.IN_FLIGHT  # past the guard: attempt 1 already failed
    payout.record_failure(code="again", message="a second outcome", request_id=None)
    ledger.save(payout)
    return "es_v", payout.version


def plant_simulated_in_real_store(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    payout = _in_flight(ledger, gateway, "es_v")
    payout.record_transfer(transfer_id="sim_forged", request_id=None, simulated=True)
    ledger.save(payout)
    return "es_v", payout.version - 1  # the TransferSucceeded, before its Released


def plant_attempt_terms_changed(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    payout = _failed(ledger, gateway, "es_v")
    payout.amount = payout.amount * 100  # a later claim for more, written behind the ledger
    payout.start_next_attempt(
        payee_user_id=payout.payee_user_id,
        destination_account=payout.destination_account,
        started_at=datetime.now(UTC),
    )
    ledger.save(payout)
    return "es_v", payout.version


def plant_transfer_unlike_claim(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> tuple[str, int]:
    payout = _in_flight(ledger, gateway, "es_v")
    payout.destination_account = "acct_mallory"  # the recorded transfer went elsewhere
    payout.record_transfer(transfer_id="tr_elsewhere", request_id=None)
    ledger.save(payout)
    return "es_v", payout.version - 1  # the TransferSucceeded, before its Released


PLANTERS: dict[ViolationKind, Planter] = {
    ViolationKind.DOUBLE_TRANSFER: plant_double_transfer,
    ViolationKind.TRANSFER_ID_REUSED: plant_transfer_id_reused,
    ViolationKind.RELEASE_WITHOUT_TRANSFER: plant_release_without_transfer,
    ViolationKind.REVERSAL_EXCEEDS_AMOUNT: plant_reversal_exceeds_amount,
    ViolationKind.REVERSAL_WITHOUT_TRANSFER: plant_reversal_without_transfer,
    ViolationKind.ATTEMPT_WITHOUT_OUTCOME: plant_attempt_without_outcome,
    ViolationKind.OUTCOME_WITHOUT_ATTEMPT: plant_outcome_without_attempt,
    ViolationKind.SIMULATED_IN_REAL_STORE: plant_simulated_in_real_store,
    ViolationKind.ATTEMPT_TERMS_CHANGED: plant_attempt_terms_changed,
    ViolationKind.TRANSFER_UNLIKE_CLAIM: plant_transfer_unlike_claim,
}


def test_every_rule_has_a_planted_violation() -> None:
    """Only damaged rows (tested on their own) and a simulated store's rule lack a planter.

    REAL_IN_SIMULATED_STORE needs a simulated store (tests/test_store_mode.py plants
    it), HIDDEN_ROW PostgreSQL (tests/audit/test_hidden_rows.py); the platform
    reversals' rules are planted in tests/audit/test_reversals.py.
    """
    from tests.audit.test_reversals import PLANTERS as REVERSAL_PLANTERS

    unplanted = {
        ViolationKind.UNDECODABLE,
        ViolationKind.ILL_TYPED,
        ViolationKind.REAL_IN_SIMULATED_STORE,
        ViolationKind.HIDDEN_ROW,
    }
    reversals = {kind for kind, _ in REVERSAL_PLANTERS.values()}
    assert set(PLANTERS) | unplanted | reversals == set(ViolationKind)


def test_a_clean_history_has_no_violations(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """The scenario's paid, failed, retried, in-flight and reversed payouts break no rule."""
    run_scenario(ledger, gateway)

    report = audit_ledger(ledger)

    assert report.ok, report.violations
    assert report.events == ledger.recorder.max_notification_id()
    assert [f.event_service_id for f in report.in_flight] == ledger.in_flight()


@pytest.mark.parametrize("kind", list(PLANTERS), ids=lambda k: k.value)
def test_each_planted_violation_is_caught_and_names_its_event(
    kind: ViolationKind, ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """The audit reports exactly the broken rule, at the offending event's notification."""
    run_scenario(ledger, gateway)
    service, version = PLANTERS[kind](ledger, gateway)
    expected_id = notification_ids(ledger, ledger.payout_id(service))[version - 1]

    report = audit_ledger(ledger)

    assert [v.kind for v in report.violations] == [kind]
    [violation] = report.violations
    assert violation.notification_id == expected_id
    assert violation.originator_version == version
    assert violation.event_service_id == service
    assert violation.payout_id == str(ledger.payout_id(service))


@pytest.mark.parametrize("kind", list(PLANTERS), ids=lambda k: k.value)
def test_decoding_states_or_whole_events_gives_the_same_report(
    kind: ViolationKind, ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """The fast path (states, upcast, no event objects) agrees with the mapper's events."""
    run_scenario(ledger, gateway)
    PLANTERS[kind](ledger, gateway)

    assert audit_ledger(ledger, decode="mapper") == audit_ledger(ledger, decode="states")


def test_a_damaged_event_is_a_violation(
    durable_ledger: PayoutLedger, gateway: InMemoryTransferGateway, durable_store_url: str
) -> None:
    """A row that no longer decodes is reported, and the rest of the log is still audited."""
    run_scenario(durable_ledger, gateway)
    released = notification_ids(durable_ledger, durable_ledger.payout_id("es_paid"))[-1]
    RawStore(durable_store_url).set_state(released, b"not an event")

    report = audit_ledger(durable_ledger)

    assert [(v.kind, v.notification_id) for v in report.violations] == [
        (ViolationKind.UNDECODABLE, released)
    ]
    assert report.events == durable_ledger.recorder.max_notification_id()


@pytest.mark.parametrize("decode", ["states", "mapper"])
def test_a_malformed_event_is_a_violation_not_a_crash(
    decode: Decode,
    durable_ledger: PayoutLedger,
    gateway: InMemoryTransferGateway,
    durable_store_url: str,
) -> None:
    """Valid JSON without a field the rules need is reported at its notification (ill-typed)."""
    run_scenario(durable_ledger, gateway)
    released = notification_ids(durable_ledger, durable_ledger.payout_id("es_paid"))[-1]
    RawStore(durable_store_url).edit(released, lambda state: state.pop("transfer_id"))

    report = audit_ledger(durable_ledger, decode=decode)

    assert [(v.kind, v.notification_id) for v in report.violations] == [
        (ViolationKind.ILL_TYPED, released)
    ]
    assert "transfer_id is missing" in report.violations[0].detail


def test_totals_per_currency_and_provider_match_the_transfers_made(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """Released and reversed amounts equal what the gateway transferred and reversed."""
    run_scenario(ledger, gateway)
    provider_of = {ALICE.stripe_account_id: ALICE.id, CAROL.stripe_account_id: CAROL.id}

    report = audit_ledger(ledger)

    released: Counter[str] = Counter()
    reversed_: Counter[str] = Counter()
    by_provider: Counter[tuple[str, str]] = Counter()
    for t in gateway.transfers:
        released[t.currency] += t.amount
        reversed_[t.currency] += t.amount_reversed
        by_provider[(provider_of[t.destination], t.currency)] += t.amount
    assert {c.currency: c.released_amount for c in report.currencies} == released
    assert {c.currency: c.reversed_amount for c in report.currencies} == reversed_
    assert {c.currency: c.released for c in report.currencies} == Counter(
        t.currency for t in gateway.transfers
    )
    assert {(p.provider_id, p.currency): p.released_amount for p in report.providers} == by_provider
    payment = ledger.captured_payment("pi_1")
    assert payment is not None
    [captured] = [c for c in report.currencies if c.currency == payment.currency]
    assert captured.captured_amount == payment.amount


@pytest.mark.parametrize("decode", ["states", "mapper"])
def test_the_audit_reads_the_log_a_page_at_a_time(
    decode: Decode, ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """Every page holds at most page_size events; the result does not depend on the page size."""
    run_scenario(ledger, gateway)
    whole = audit_ledger(ledger, decode=decode)
    pages: list[tuple[int, int]] = []
    page_size = 4

    paged = audit_ledger(
        ledger, page_size=page_size, decode=decode, on_page=lambda *page: pages.append(page)
    )

    assert paged == whole
    assert max(count for _, count in pages) == page_size
    assert sum(count for _, count in pages) == whole.events
    assert len(pages) == -(-whole.events // page_size)
    assert pages[-1][0] == whole.last_notification_id


def test_the_audit_command_prints_totals_and_exits_zero(
    durable_ledger: PayoutLedger, gateway: InMemoryTransferGateway, durable_store_url: str
) -> None:
    """A table for people, JSON for machines, exit 0 when every rule holds."""
    run_scenario(durable_ledger, gateway)
    env = {"PAYOUT_LEDGER_STORE_URL": durable_store_url}

    table = CliRunner().invoke(app, ["audit"], env=env)
    as_json = CliRunner().invoke(app, ["audit", "--json"], env=env)

    assert table.exit_code == 0, table.output
    assert "Per currency" in table.output and "es_inflight" in table.output
    assert as_json.exit_code == 0
    report = json.loads(as_json.stdout)
    assert report["ok"] is True
    assert {c["currency"] for c in report["currencies"]} == {"usd", "eur"}


def test_the_audit_command_exits_non_zero_naming_the_event(
    durable_ledger: PayoutLedger, gateway: InMemoryTransferGateway, durable_store_url: str
) -> None:
    """A double transfer makes `audit` exit 1 with the rule, notification id and payout."""
    service, version = plant_double_transfer(durable_ledger, gateway)
    expected_id = notification_ids(durable_ledger, durable_ledger.payout_id(service))[version - 1]

    result = CliRunner().invoke(app, ["audit"], env={"PAYOUT_LEDGER_STORE_URL": durable_store_url})

    assert result.exit_code == 1
    assert "double_transfer" in result.output
    assert f"notification {expected_id}" in result.output


def test_a_progress_bar_is_drawn_only_on_a_terminal_for_long_logs(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Short logs and pipes get no bar; a long log on a terminal gets one."""
    run_scenario(ledger, gateway)
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    with audit_commands._progress(ledger, "audit", enabled=True) as on_page:
        assert on_page is None
    monkeypatch.setattr(audit_commands, "_PROGRESS_FROM", 1)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("FORCE_COLOR", "1")

    with audit_commands._progress(ledger, "audit", enabled=True) as on_page:
        assert on_page is not None
        report = audit_ledger(ledger, on_page=on_page, page_size=5)

    assert isinstance(report, AuditReport) and report.ok


def test_the_audit_knows_the_topic_of_every_event_the_ledger_writes() -> None:
    """A new event class must be added to KNOWN_TOPICS, or the audit calls it undecodable."""
    from eventsourcing.utils import get_topic

    from payout_ledger.audit.replay import KNOWN_TOPICS
    from payout_ledger.domain.chain import ChainedAggregate

    def aggregates(cls: type) -> list[type]:
        found = [cls]
        for sub in cls.__subclasses__():
            found += aggregates(sub)
        return found

    written = {
        get_topic(event)
        for aggregate in aggregates(ChainedAggregate)
        if aggregate.__module__.startswith("payout_ledger.")
        for event in vars(aggregate).values()
        if isinstance(event, type)
        and issubclass(event, ChainedAggregate.Event)
        and event.__name__ not in {"Event", "Created"}  # the bases, never stored
    }
    assert written == KNOWN_TOPICS

"""A store is simulated or real from its first event; a ledger of the other kind may not write.

The trial's finding: ``payout-ledger resume`` with ``PAYOUT_LEDGER_STRIPE_ENABLED=false``
(environment development), or a staging ledger with Stripe disabled pointed at
a real store, turned real in-flight payouts into ``sim_`` releases; the audit
counted the money as released and reconcile skipped them.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from payout_ledger import (
    ConfigurationError,
    LedgerSettings,
    PayoutLedger,
    PayoutStatus,
    TransferOutcomeUnknown,
)
from payout_ledger.cli import app
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.support import ALICE, BOB_NOT_ONBOARDED, release

PROVIDERS = [ALICE, BOB_NOT_ONBOARDED]


def real(store_url: str, gateway: InMemoryTransferGateway | None = None) -> PayoutLedger:
    return PayoutLedger(
        settings=LedgerSettings(store_url=store_url),
        providers=InMemoryProviderDirectory(PROVIDERS),
        gateway=gateway or InMemoryTransferGateway(),
    )


def simulated(store_url: str) -> PayoutLedger:
    return PayoutLedger(
        settings=LedgerSettings(store_url=store_url, stripe_enabled=False),
        providers=InMemoryProviderDirectory(PROVIDERS),
    )


def events(ledger: PayoutLedger) -> int:
    return ledger.recorder.max_notification_id() or 0


def test_a_simulated_ledger_cannot_settle_a_real_stores_in_flight_payout(
    durable_store_url: str,
) -> None:
    """The trial's case: Stripe disabled, resume on a real store: refused, nothing recorded."""
    gateway = InMemoryTransferGateway()
    with real(durable_store_url, gateway) as host:
        gateway.fail_next(TransferOutcomeUnknown("timeout"))
        assert host.release_payment(release("es_1")).in_flight
        before = events(host)

    with simulated(durable_store_url) as dev:
        assert dev.in_flight() == ["es_1"]  # reading is fine
        with pytest.raises(ConfigurationError, match="this store is test"):
            dev.resume_in_flight()
        with pytest.raises(ConfigurationError, match="this ledger is simulated"):
            dev.release_payment(release("es_2"))
        assert events(dev) == before

    with real(durable_store_url, gateway) as host:
        [result] = host.resume_in_flight()
        assert result.success and not (result.transfer_id or "").startswith("sim_")


def test_a_real_ledger_cannot_pay_for_a_simulated_stores_claims(durable_store_url: str) -> None:
    gateway = InMemoryTransferGateway()
    with simulated(durable_store_url) as dev:
        assert dev.release_payment(release("es_1", provider_id="prov_bob")).success
        before = events(dev)

    with real(durable_store_url, gateway) as host, pytest.raises(ConfigurationError):
        host.release_payment(release("es_2"))
    assert gateway.calls == 0
    with simulated(durable_store_url) as dev:
        assert events(dev) == before


def test_the_cli_resume_with_stripe_disabled_refuses_a_real_store(tmp_path: Path) -> None:
    """``PAYOUT_LEDGER_STRIPE_ENABLED=false payout-ledger resume`` on a real store: one line."""
    url = f"sqlite:///{tmp_path / 'real.db'}"
    gateway = InMemoryTransferGateway()
    with real(url, gateway) as host:
        gateway.fail_next(TransferOutcomeUnknown("timeout"))
        assert host.release_payment(release("es_1")).in_flight

    env = {"PAYOUT_LEDGER_STORE_URL": url, "PAYOUT_LEDGER_STRIPE_ENABLED": "false"}
    result = CliRunner().invoke(app, ["resume"], env=env)

    assert result.exit_code == 2, result.output
    assert "this store is test" in result.output
    assert "Traceback" not in result.output
    with real(url, gateway) as host:
        assert host.in_flight() == ["es_1"]


@pytest.mark.parametrize("simulated_transfer", [True, False], ids=["simulated", "real"])
def test_a_store_from_before_modes_were_recorded_is_judged_by_its_first_transfer(
    sqlite_url: str, simulated_transfer: bool
) -> None:
    """No mode record: the first transfer decides; the other kind of ledger is refused."""
    writer = simulated(sqlite_url) if simulated_transfer else real(sqlite_url)
    with writer:
        # What an older release wrote: money events without a mode record.
        writer._store_mode_settled = True
        assert writer.release_payment(release("es_1")).success

    other = real(sqlite_url) if simulated_transfer else simulated(sqlite_url)
    same = simulated(sqlite_url) if simulated_transfer else real(sqlite_url)
    with other, pytest.raises(ConfigurationError, match="its events say so"):
        other.release_payment(release("es_2"))
    with same:
        assert same.release_payment(release("es_3")).success
        assert same._recorded_store_mode() is same.store_mode


def test_an_old_store_with_only_claims_is_real_unless_proven_otherwise(sqlite_url: str) -> None:
    gateway = InMemoryTransferGateway()
    with real(sqlite_url, gateway) as writer:
        writer._store_mode_settled = True
        gateway.fail_next(TransferOutcomeUnknown("timeout"))
        assert writer.release_payment(release("es_1")).in_flight

    with simulated(sqlite_url) as dev, pytest.raises(ConfigurationError):
        dev.resume_in_flight()


def test_ledgers_of_both_kinds_starting_on_a_new_store_at_once_agree_on_one_mode(
    durable_store_url: str,
) -> None:
    """Eight ledgers of each kind race for a new store: one mode wins; the others refuse."""
    ledgers = [real(durable_store_url) for _ in range(4)] + [
        simulated(durable_store_url) for _ in range(4)
    ]
    barrier = threading.Barrier(len(ledgers))
    outcomes: dict[int, Any] = {}

    def release_one(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            outcomes[i] = ledgers[i].release_payment(release(f"es_{i}", provider_id="prov_alice"))
        except ConfigurationError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=release_one, args=(i,)) for i in range(len(ledgers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    from payout_ledger.domain.store_mode import StoreMode

    recorded = ledgers[0]._recorded_store_mode()
    for ledger in ledgers:
        ledger.close()

    winners = [i for i, o in outcomes.items() if not isinstance(o, ConfigurationError)]
    assert len(outcomes) == len(ledgers)
    expected = list(range(4)) if recorded is StoreMode.TEST else list(range(4, 8))
    assert sorted(winners) == expected


def test_any_ledger_may_seal_any_store(sqlite_url: str) -> None:
    with real(sqlite_url) as host:
        assert host.release_payment(release("es_1")).success
    with simulated(sqlite_url) as dev:
        before = events(dev)
        assert dev.seal().event_count == before


def test_a_simulated_webhook_endpoint_cannot_record_into_a_real_store(sqlite_url: str) -> None:
    with real(sqlite_url) as host:
        assert host.release_payment(release("es_1")).success
    event = {"id": "evt_1", "type": "account.updated", "data": {"object": {"id": "acct_x"}}}
    with simulated(sqlite_url) as dev, pytest.raises(ConfigurationError):
        dev.record_stripe_event(event=event, raw_body=b"{}", headers={})


def test_the_mode_is_recorded_once_with_the_first_money_event(store_url: str) -> None:
    from payout_ledger.domain.store_mode import StoreMode

    with real(store_url) as host:
        assert host.store_mode is StoreMode.TEST
        assert host._recorded_store_mode() is None  # nothing written yet
        host.release_payment(release("es_1"))
        host.release_payment(release("es_2"))
        assert host._recorded_store_mode() is StoreMode.TEST
        topics = [n.topic for n in host.recorder.select_notifications(None, 100)]
    assert topics.count("payout_ledger:StoreModeDeclared") == 1
    assert topics[0] == "payout_ledger:StoreModeDeclared"


def test_the_audit_and_reconcile_flag_a_simulated_transfer_in_a_real_store(
    sqlite_url: str,
) -> None:
    """Written behind the ledger's back (a database login): counted released, no money moved."""
    from payout_ledger.audit import ViolationKind, audit_ledger
    from payout_ledger.service.reconcile import MismatchKind, reconcile

    gateway = InMemoryTransferGateway()
    with real(sqlite_url, gateway) as host:
        assert host.release_payment(release("es_real")).success
        gateway.fail_next(TransferOutcomeUnknown("timeout"))
        assert host.release_payment(release("es_1")).in_flight
        payout = host.get_payout("es_1")
        payout.record_transfer(transfer_id="sim_forged", request_id=None, simulated=True)
        host.save(payout)

        report = audit_ledger(host)
        mismatches = reconcile(host, event_service_ids=["es_real", "es_1"]).mismatches

    [violation] = report.violations
    assert violation.kind is ViolationKind.SIMULATED_IN_REAL_STORE
    assert violation.event_service_id == "es_1"
    assert [(m.kind, m.event_service_id) for m in mismatches] == [(MismatchKind.SIMULATED, "es_1")]


def test_the_audit_flags_a_real_transfer_in_a_simulated_store(sqlite_url: str) -> None:
    from payout_ledger.audit import ViolationKind, audit_ledger

    with simulated(sqlite_url) as dev:
        assert dev.release_payment(release("es_sim")).success
        dev.release_payment(release("es_1"))
        payout = dev.get_payout("es_1")
        payout._pending_events.clear()  # type: ignore[attr-defined]
        payout.status = PayoutStatus.IN_FLIGHT
        payout.record_transfer(transfer_id="tr_real", request_id=None, simulated=False)
        dev.save(payout)

        report = audit_ledger(dev)

    kinds = [v.kind for v in report.violations]
    assert ViolationKind.REAL_IN_SIMULATED_STORE in kinds


class LiveGateway(InMemoryTransferGateway):
    """A stand-in for a live-mode Stripe gateway."""

    livemode = True


def test_a_test_mode_ledger_cannot_resume_a_live_stores_payouts(durable_store_url: str) -> None:
    """A staging resume with a test key would find nothing in test mode and be refused."""
    live_gateway = LiveGateway()
    with real(durable_store_url, live_gateway) as production:
        assert production.store_mode.value == "live"
        live_gateway.fail_next(TransferOutcomeUnknown("response lost"), after_commit=True)
        assert production.release_payment(release("es_1")).in_flight
        before = events(production)

    staging_gateway = InMemoryTransferGateway()  # a test double: test mode
    with real(durable_store_url, staging_gateway) as staging:
        assert staging.store_mode.value == "test"
        with pytest.raises(ConfigurationError, match="this store is live"):
            staging.resume_in_flight()
        assert events(staging) == before
    assert (staging_gateway.calls, staging_gateway.list_calls) == (0, 0)  # Stripe never asked

    with real(durable_store_url, live_gateway) as production:
        [result] = production.resume_in_flight()
    assert result.success and len(live_gateway.transfers) == 1


def test_a_failure_recorded_for_an_attempt_that_paid_is_not_paid_again(
    durable_store_url: str,
) -> None:
    """Whatever recorded it (a refusal Stripe did not store, another mode), Stripe is asked."""
    from payout_ledger import LedgerIntegrityError

    gateway = InMemoryTransferGateway()
    with real(durable_store_url, gateway) as host:
        gateway.fail_next(TransferOutcomeUnknown("response lost"), after_commit=True)
        assert host.release_payment(release("es_1")).in_flight
        payout = host.get_payout("es_1")
        payout.record_failure(
            code="resource_missing", message="No such destination", request_id=None
        )
        host.save(payout)
        before = events(host)

        with pytest.raises(LedgerIntegrityError, match="recorded as failed"):
            host.release_payment(release("es_1"))

        assert events(host) == before
    assert len(gateway.transfers) == 1


def test_a_later_claim_with_other_terms_written_behind_the_ledger_is_not_paid(
    sqlite_url: str,
) -> None:
    """A database writer appends attempt 2 for 950,000 after the latest seal: resume refuses."""
    gateway = InMemoryTransferGateway()
    with real(sqlite_url, gateway) as host:
        gateway.decline_next()
        assert host.release_payment(release("es_1")).outcome.value == "failed"
        payout = host.get_payout("es_1")
        payout.amount = 950_000
        payout.start_next_attempt(
            payee_user_id="user_mallory",
            destination_account="acct_mallory",
            started_at=payout.attempt_started_at,
        )
        host.save(payout)

        [result] = host.resume_in_flight()

    assert result.error_code == "cannot_resume" and "other terms" in (result.error_message or "")
    assert gateway.transfers == []

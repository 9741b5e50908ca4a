"""Tampering with the database directly is found by verify, on SQLite and PostgreSQL.

Each test edits, deletes, inserts or reorders stored events with plain SQL,
as someone with write access to the database could, then runs the
verification. The last tests pin down what cannot be noticed without an
anchor kept outside the database (see docs/audit.md, "Threat model").
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from typer.testing import CliRunner

from payout_ledger import LedgerIntegrityError, PayoutAggregate, PayoutLedger
from payout_ledger.adapters.mapper import chained_mapper, notification_digest
from payout_ledger.audit import (
    ProblemKind,
    SealInfo,
    VerifyReport,
    audit_ledger,
    iter_notifications,
    verify_ledger,
)
from payout_ledger.cli import app
from payout_ledger.domain.chain import GENESIS, roll
from payout_ledger.domain.seal import LEDGER_SEAL_ID
from payout_ledger.testing import InMemoryTransferGateway
from tests.audit.scenario import release, run_scenario
from tests.audit.support import RawRow, RawStore, last_id, notification_ids


@pytest.fixture
def store_url(durable_store_url: str) -> str:
    """Only stores an attacker can edit: SQLite and PostgreSQL."""
    return durable_store_url


@pytest.fixture
def sealed(ledger: PayoutLedger, gateway: InMemoryTransferGateway) -> SealInfo:
    """The scenario, sealed, then one more payout after the seal."""
    run_scenario(ledger, gateway)
    seal = ledger.seal()
    ledger.release_payment(release("es_after_seal"))
    return seal


def kinds(report: VerifyReport) -> set[ProblemKind]:
    return {p.kind for p in report.problems}


def at(report: VerifyReport, kind: ProblemKind) -> list[int | None]:
    return [p.notification_id for p in report.problems if p.kind is kind]


def ids(ledger: PayoutLedger, event_service_id: str) -> list[int]:
    return notification_ids(ledger, ledger.payout_id(event_service_id))


def test_an_untouched_log_verifies(ledger: PayoutLedger, sealed: SealInfo) -> None:
    """No problems, every event chained, and the latest seal digest is reported for anchoring."""
    report = verify_ledger(ledger, anchors=[sealed.seal_digest])

    assert report.ok, report.problems
    assert report.events == last_id(ledger)
    assert report.chained_events == report.events
    assert report.latest_seal == sealed
    assert report.anchors_found == [sealed.seal_digest]
    assert report.unsealed_events == report.events - sealed.event_count


def test_an_edited_event_breaks_the_link_from_the_next_one(
    ledger: PayoutLedger, sealed: SealInfo, raw: RawStore
) -> None:
    """Raising a PayoutStarted's amount is caught at the payout's next event."""
    started, succeeded, *_ = ids(ledger, "es_paid")

    raw.edit(started, lambda state: state.update(amount=state["amount"] * 10))

    report = verify_ledger(ledger)
    assert at(report, ProblemKind.BROKEN_LINK) == [succeeded]
    assert ProblemKind.SEAL_MISMATCH in kinds(report)


def test_an_edit_of_an_aggregates_newest_event_is_caught_by_the_seal(
    ledger: PayoutLedger, sealed: SealInfo, raw: RawStore
) -> None:
    """No later event names the newest Released of a payout; the seal's digest does."""
    *_, released = ids(ledger, "es_lost")

    raw.edit(released, lambda state: state.update(payee_user_id="user_mallory"))

    report = verify_ledger(ledger)
    assert kinds(report) == {ProblemKind.SEAL_MISMATCH}
    [problem] = report.problems
    assert str(sealed.through_notification_id) in problem.detail


def test_a_damaged_event_is_reported_undecodable(
    ledger: PayoutLedger, sealed: SealInfo, raw: RawStore
) -> None:
    """Bytes that are not an event anymore are named, and the seal no longer matches."""
    started = ids(ledger, "es_paid")[0]

    raw.set_state(started, b"\x00garbage")

    report = verify_ledger(ledger)
    assert at(report, ProblemKind.UNDECODABLE) == [started]
    assert ProblemKind.SEAL_MISMATCH in kinds(report)


def test_a_deleted_event_leaves_a_gap_in_its_payouts_versions(
    ledger: PayoutLedger, sealed: SealInfo, raw: RawStore
) -> None:
    """Removing the declined attempt of a retried payout is caught at the next attempt."""
    _, failed, second_attempt, *_ = ids(ledger, "es_retry")

    raw.delete(failed)

    report = verify_ledger(ledger)
    assert at(report, ProblemKind.VERSION_OUT_OF_SEQUENCE) == [second_attempt]
    assert ProblemKind.SEAL_MISMATCH in kinds(report)


def test_deleting_the_newest_sealed_events_is_caught_by_the_seal(
    ledger: PayoutLedger, sealed: SealInfo, raw: RawStore
) -> None:
    """The last events before the seal, gone without a trace in any chain: the count differs."""
    newest = sealed.through_notification_id

    raw.delete(newest)
    raw.delete(newest - 1)

    report = verify_ledger(ledger)
    assert kinds(report) == {ProblemKind.SEAL_MISMATCH}
    assert f"recorded {sealed.event_count} events" in report.problems[0].detail


def test_an_inserted_copy_of_an_event_breaks_the_link(
    ledger: PayoutLedger, sealed: SealInfo, raw: RawStore
) -> None:
    """A second TransferSucceeded copied onto a paid payout does not link to its predecessor."""
    paid = ids(ledger, "es_paid")
    copy = raw.row(paid[1])
    forged = RawRow(0, copy.originator_id, len(paid) + 1, copy.topic, copy.state)

    raw.insert(last_id(ledger) + 1, forged)

    report = verify_ledger(ledger)
    assert at(report, ProblemKind.BROKEN_LINK) == [last_id(ledger)]


def test_a_well_forged_payout_slipped_under_the_seal_is_caught_by_the_seal(
    ledger: PayoutLedger, sealed: SealInfo, raw: RawStore
) -> None:
    """A correctly chained fake payout, given notification ids before the seal's range."""
    fake = PayoutAggregate.start(
        event_service_id="es_fake",
        provider_id="prov_mallory",
        payee_user_id="user_mallory",
        destination_account="acct_mallory",
        amount=99_999,
        currency="usd",
        started_at=datetime.now(UTC),
    )
    fake.record_transfer(transfer_id="tr_fake", request_id=None)
    events = fake.collect_events()
    for offset, event in enumerate(events):
        stored = ledger.mapper.to_stored_event(event)
        row = RawRow(0, fake.id, stored.originator_version, stored.topic, stored.state)
        raw.insert(offset - len(events) + 1, row)  # ids -2, -1, 0: free, below the log

    assert ledger.get_payout("es_fake").is_paid  # the ledger itself would believe it
    report = verify_ledger(ledger)
    assert kinds(report) == {ProblemKind.SEAL_MISMATCH}


def test_reordering_a_payouts_events_is_caught_by_its_versions(
    ledger: PayoutLedger, sealed: SealInfo, raw: RawStore
) -> None:
    """Swapping the places of a payout's first two events puts version 2 before version 1."""
    first, second, *_ = ids(ledger, "es_retry")

    raw.swap(first, second)

    report = verify_ledger(ledger)
    assert at(report, ProblemKind.VERSION_OUT_OF_SEQUENCE)
    assert ProblemKind.SEAL_MISMATCH in kinds(report)


def test_reordering_events_of_different_payouts_is_caught_by_the_seal(
    ledger: PayoutLedger, sealed: SealInfo, raw: RawStore
) -> None:
    """Swapping two payouts' events keeps each chain intact; the seal's rolling digest differs."""
    released_paid = ids(ledger, "es_paid")[-1]
    started_retry = ids(ledger, "es_retry")[0]

    raw.swap(released_paid, started_retry)

    report = verify_ledger(ledger)
    assert kinds(report) == {ProblemKind.SEAL_MISMATCH}


def test_a_rewritten_seal_is_caught_by_the_anchor_kept_outside(
    ledger: PayoutLedger, sealed: SealInfo, raw: RawStore
) -> None:
    """Deleting the newest events and re-sealing hides them from the log, not from the anchor."""
    raw.delete(sealed.through_notification_id)
    seal_row = max(ids_of_seals(ledger))
    raw.delete(seal_row)
    ledger.seal()  # the attacker seals the shortened log with the library itself

    assert verify_ledger(ledger).ok  # without an anchor the rewrite is invisible
    report = verify_ledger(ledger, anchors=[sealed.seal_digest])
    assert kinds(report) == {ProblemKind.ANCHOR_NOT_FOUND}


def test_an_edit_of_an_unsealed_newest_event_goes_unnoticed(
    ledger: PayoutLedger, sealed: SealInfo, raw: RawStore
) -> None:
    """The documented limit: nothing names an event after the latest seal and its chain's end."""
    newest = last_id(ledger)

    raw.edit(newest, lambda state: state.update(payee_user_id="user_mallory"))

    report = verify_ledger(ledger, anchors=[sealed.seal_digest])
    assert report.ok
    assert report.unsealed_events > 0


def test_the_verify_command_exits_non_zero_and_names_the_event(
    ledger: PayoutLedger, sealed: SealInfo, raw: RawStore, durable_store_url: str
) -> None:
    """`payout-ledger verify` prints the problem and exits 1; `--json` has every finding."""
    started, succeeded, *_ = ids(ledger, "es_paid")
    env = {"PAYOUT_LEDGER_STORE_URL": durable_store_url}
    assert CliRunner().invoke(app, ["verify"], env=env).exit_code == 0
    raw.edit(started, lambda state: state.update(amount=1))

    result = CliRunner().invoke(app, ["verify", "--anchor", sealed.seal_digest], env=env)
    as_json = CliRunner().invoke(app, ["verify", "--json"], env=env)

    assert result.exit_code == 1
    assert "broken_link" in result.output and f"notification {succeeded}" in result.output
    report: dict[str, Any] = json.loads(as_json.stdout)
    assert {p["kind"] for p in report["problems"]} == {"broken_link", "seal_mismatch"}


def ids_of_seals(ledger: PayoutLedger) -> list[int]:
    return notification_ids(ledger, LEDGER_SEAL_ID)


def test_seal_prints_the_digest_that_verify_finds_from_an_anchor_file(
    ledger: PayoutLedger, sealed: SealInfo, durable_store_url: str, tmp_path: Path
) -> None:
    """`seal --json` gives the seal digest; `verify --anchor-file` finds every anchored seal."""
    env = {"PAYOUT_LEDGER_STORE_URL": durable_store_url}

    result = CliRunner().invoke(app, ["seal", "--json"], env=env)

    assert result.exit_code == 0, result.output
    second = json.loads(result.stdout)
    assert second["seal_number"] == sealed.seal_number + 1
    assert second["through_notification_id"] == last_id(ledger) - 1
    anchors = tmp_path / "anchors"
    anchors.write_text(f"{sealed.seal_digest}\n{second['seal_digest']}  seal 2\n")
    verified = CliRunner().invoke(app, ["verify", "--json", "--anchor-file", str(anchors)], env=env)
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.stdout)
    assert report["anchors_found"] == [sealed.seal_digest, second["seal_digest"]]
    assert report["latest_seal"]["seal_digest"] == second["seal_digest"]


def _stored_fields(row: RawRow) -> dict[str, Any]:
    """A row's stored JSON state without its class version: what the attacker copies."""
    state = row.json()
    state.pop("class_version", None)
    return state


def test_a_forged_payout_started_cannot_claim_its_original_fields(
    ledger: PayoutLedger, sealed: SealInfo, raw: RawStore
) -> None:
    """A stored ``_stored_form`` key names no fields to digest: the forged values are digested."""
    started = ids(ledger, "es_paid")[0]
    original = raw.row(started)

    def forge(state: dict[str, Any]) -> None:
        state.update(amount=999_999, currency="usd", destination_account="acct_mallory")
        state["_stored_form"] = [2, _stored_fields(original)]

    raw.edit(started, forge)

    assert ledger.get_payout("es_paid").amount == 999_999  # what the ledger now believes
    report = verify_ledger(ledger, anchors=[sealed.seal_digest])
    assert not report.ok
    assert ProblemKind.BROKEN_LINK in kinds(report)
    assert ProblemKind.SEAL_MISMATCH in kinds(report)


def _reseal_with_stored_form(
    ledger: PayoutLedger, raw: RawStore, seal_row: int, sealed: SealInfo
) -> None:
    """Rewrite a seal's count and log digest for the log as it is now, claiming its old form."""
    original = raw.row(seal_row)
    count, rolling = 0, GENESIS
    for n in iter_notifications(ledger, stop=sealed.through_notification_id):
        digest, _, _ = notification_digest(chained_mapper(ledger), n)
        rolling = roll(rolling, n.id, digest)
        count += 1

    def forge(state: dict[str, Any]) -> None:
        state.update(event_count=count, log_digest=rolling)
        state["_stored_form"] = [1, _stored_fields(original)]

    raw.edit(seal_row, forge)


@pytest.mark.parametrize("change", ["delete", "insert"])
def test_a_forged_seal_cannot_claim_its_original_fields(
    change: str, ledger: PayoutLedger, sealed: SealInfo, raw: RawStore
) -> None:
    """Events removed from (or slipped under) an anchored seal, the seal rewritten to match."""
    if change == "delete":
        raw.delete(sealed.through_notification_id)  # a single-event aggregate: no chain notices
    else:
        fake = PayoutAggregate.start(
            event_service_id="es_fake",
            provider_id="prov_mallory",
            payee_user_id="user_mallory",
            destination_account="acct_mallory",
            amount=99_999,
            currency="usd",
            started_at=datetime.now(UTC),
        )
        stored = ledger.mapper.to_stored_event(fake.collect_events()[0])
        raw.insert(0, RawRow(0, fake.id, 1, stored.topic, stored.state))
    [seal_row] = ids_of_seals(ledger)

    _reseal_with_stored_form(ledger, raw, seal_row, sealed)

    report = verify_ledger(ledger, anchors=[sealed.seal_digest])
    assert not report.ok
    assert ProblemKind.ANCHOR_NOT_FOUND in kinds(report) or ProblemKind.SEAL_MISMATCH in kinds(
        report
    )


def test_a_topic_naming_the_event_class_by_another_path_is_undecodable(
    ledger: PayoutLedger, sealed: SealInfo, raw: RawStore
) -> None:
    """eventsourcing resolves ``module:Class.Event`` too; verify accepts only the class's topic."""
    *_, released = ids(ledger, "es_after_seal")  # after the seal: only this check can see it
    rows = raw.rows()
    alias = "payout_ledger.domain.payout:PayoutAggregate.Released"
    raw.restore([replace(r, topic=alias) if r.notification_id == released else r for r in rows])

    with pytest.raises(LedgerIntegrityError, match=r"not PayoutAggregate\.Released's own"):
        ledger.get_payout("es_after_seal")  # the ledger does not act on it
    report = verify_ledger(ledger, anchors=[sealed.seal_digest])
    assert at(report, ProblemKind.UNDECODABLE) == [released]
    assert alias in report.problems[0].detail


@pytest.mark.parametrize("durable_store_url", ["sqlite"], indirect=True)  # uuid on PostgreSQL
@pytest.mark.parametrize(
    "spelling", [str.upper, lambda hex_id: str(UUID(hex_id))], ids=["upper", "hyphens"]
)
def test_an_originator_id_respelt_in_sqlite_is_ill_typed(
    spelling: Callable[[str], str], ledger: PayoutLedger, sealed: SealInfo, store_url: str
) -> None:
    """The same UUID spelt otherwise hides the event from its payout; verify names the row."""
    *_, released = ids(ledger, "es_paid")
    payout_id = ledger.payout_id("es_paid")
    with sqlite3.connect(store_url.removeprefix("sqlite:///")) as conn:
        conn.execute(
            "UPDATE stored_events SET originator_id = ? WHERE rowid = ?",
            (spelling(payout_id.hex), released),
        )

    assert not ledger.get_payout("es_paid").is_paid  # the ledger no longer sees the release
    report = verify_ledger(ledger, anchors=[sealed.seal_digest])
    assert at(report, ProblemKind.ILL_TYPED) == [released]
    assert audit_ledger(ledger) == audit_ledger(ledger, decode="mapper")

"""Crafted stored events are findings, never crashes, in verify, seal, export and audit.

Someone with write access to the database stores values of the wrong type (a
string amount, a float attempt, a dict for ``previous_hash``, a Sealed event
whose count is a string...) or keys the event class does not have. Every
command still runs to the end and names the event.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from typer.testing import CliRunner

from payout_ledger import LedgerSettings, PayoutAggregate, PayoutLedger
from payout_ledger.audit import (
    AuditReport,
    ProblemKind,
    SealInfo,
    ViolationKind,
    audit_ledger,
    export_events,
    export_payouts,
    seal_ledger,
    verify_ledger,
)
from payout_ledger.cli import app
from payout_ledger.domain.seal import LedgerSeal
from payout_ledger.domain.stripe_events import CapturedPayment, StripeEventRecord
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.audit.scenario import release, run_scenario
from tests.audit.support import RawStore, notification_ids

P = PayoutAggregate


@pytest.fixture
def store_url(durable_store_url: str) -> str:
    """Only stores an attacker can edit: SQLite and PostgreSQL."""
    return durable_store_url


@pytest.fixture
def sealed(ledger: PayoutLedger, gateway: InMemoryTransferGateway) -> SealInfo:
    run_scenario(ledger, gateway)
    seal = ledger.seal()
    ledger.release_payment(release("es_after_seal"))
    return seal


Change = Callable[[dict[str, Any]], None]


def setting(key: str, value: object) -> Change:
    return lambda state: state.__setitem__(key, value)


# (case id, service or None, topic, change, audit violation expected?)
CASES: list[tuple[str, str | None, str, Change, bool]] = [
    ("string-amount", "es_paid", P.PayoutStarted.TOPIC, setting("amount", "5000"), True),
    ("non-list-stored-form", "es_paid", P.PayoutStarted.TOPIC, setting("_stored_form", 7), False),
    ("float-attempt", "es_retry", P.TransferFailed.TOPIC, setting("attempt", 1.0), True),
    ("bool-attempt", "es_paid", P.TransferSucceeded.TOPIC, setting("attempt", True), True),
    ("list-transfer-id", "es_paid", P.Released.TOPIC, setting("transfer_id", ["tr"]), True),
    ("dict-previous-hash", "es_paid", P.Released.TOPIC, setting("previous_hash", {"a": 1}), False),
    ("string-reversed", "es_reversed", P.TransferReversed.TOPIC,
     setting("amount_reversed", "4000"), True),
    ("null-currency", "es_retry", P.PayoutStarted.TOPIC, setting("currency", None), True),
    ("missing-amount", "es_paid", P.PayoutStarted.TOPIC, lambda s: s.pop("amount"), True),
    ("string-timestamp", "es_paid", P.PayoutStarted.TOPIC, setting("timestamp", "noon"), False),
    ("string-captured-amount", None, CapturedPayment.PaymentCaptured.TOPIC,
     setting("amount", "5000"), True),
    ("headers-not-str", None, StripeEventRecord.StripeEventReceived.TOPIC,
     setting("headers", {"stripe-signature": 1}), False),
    ("string-event-count", None, LedgerSeal.Sealed.TOPIC, setting("event_count", "12"), False),
    ("string-through", None, LedgerSeal.Sealed.TOPIC,
     setting("through_notification_id", "9"), False),
    ("bool-event-count", None, LedgerSeal.Sealed.TOPIC, setting("event_count", False), False),
    # a dict[str, str] that the transcoder revives (as a UUID, as a time): not a dict
    ("headers-transcoded", None, StripeEventRecord.StripeEventReceived.TOPIC,
     setting("headers", {"_type_": "uuid_hex", "_data_": "0" * 32}), False),
    ("metadata-transcoded", None, CapturedPayment.PaymentCaptured.TOPIC,
     setting("metadata", {"_type_": "datetime_iso", "_data_": "2026-01-01T00:00:00"}), False),
]  # fmt: skip


def target(ledger: PayoutLedger, raw: RawStore, service: str | None, topic: str) -> int:
    """The notification id of the first stored event of ``topic`` (of ``service``, if named)."""
    rows = (
        [raw.row(n) for n in notification_ids(ledger, ledger.payout_id(service))]
        if service
        else raw.rows()
    )
    return next(r.notification_id for r in rows if r.topic == topic)


@pytest.mark.parametrize(
    ("service", "topic", "change", "in_audit"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_an_ill_typed_event_is_a_finding_everywhere(
    service: str | None,
    topic: str,
    change: Change,
    in_audit: bool,
    ledger: PayoutLedger,
    sealed: SealInfo,
    raw: RawStore,
) -> None:
    """Verify names the event; seal seals; export marks the row; audit names what it folds."""
    nid = target(ledger, raw, service, topic)
    raw.edit(nid, change)

    report = verify_ledger(ledger, anchors=[sealed.seal_digest])
    assert not report.ok
    ill_typed = [p.notification_id for p in report.problems if p.kind is ProblemKind.ILL_TYPED]
    # A key the class does not declare is not ill-typed; the digest covers it.
    assert ill_typed == ([] if "_stored_form" in raw.row(nid).json() else [nid]), report.problems

    out = io.StringIO()
    export_events(ledger, out)
    [row] = [r for r in map(json.loads, out.getvalue().splitlines()) if r["notification_id"] == nid]
    if ill_typed:
        assert "ill-typed" in row["error"]
    export_events(ledger, io.StringIO(), fmt="csv")
    export_payouts(ledger, io.StringIO())

    audit = audit_ledger(ledger)
    assert audit == audit_ledger(ledger, decode="mapper")
    named = [v.notification_id for v in audit.violations if v.kind is ViolationKind.ILL_TYPED]
    assert named == ([nid] if in_audit else [])

    info = seal_ledger(ledger)
    assert info.seal_number == sealed.seal_number + 1
    assert not verify_ledger(ledger, anchors=[sealed.seal_digest]).ok


def given_twice(key: str, value: bytes) -> Callable[[bytes], bytes]:
    """The state with ``key`` given again, last, as ``value`` (JSON reads the last)."""
    return lambda state: state[:-1] + b',"' + key.encode() + b'":' + value + b"}"


# (case id, service or None, topic, change of the stored bytes, verify's finding)
RAW_CASES: list[tuple[str, str | None, str, Callable[[bytes], bytes], ProblemKind | None]] = [
    ("time-not-a-time", "es_paid", P.PayoutStarted.TOPIC,
     lambda b: b.replace(b'"started_at":{"_type_":"datetime_iso","_data_":"',
                         b'"started_at":{"_type_":"datetime_iso","_data_":"noon'),
     ProblemKind.UNDECODABLE),
    ("time-with-a-key-more", "es_paid", P.TransferSucceeded.TOPIC,
     lambda b: b.replace(b'{"_type_":"datetime_iso",', b'{"x":1,"_type_":"datetime_iso",', 1),
     ProblemKind.ILL_TYPED),
    ("amount-twice-last-a-string", "es_paid", P.PayoutStarted.TOPIC,
     given_twice("amount", b'"5000"'), ProblemKind.ILL_TYPED),
    ("amount-twice-last-an-int", "es_retry", P.PayoutStarted.TOPIC,
     given_twice("amount", b"7001"), None),
    ("transfer-id-twice", "es_paid", P.Released.TOPIC, given_twice("transfer_id", b'"tr_x"'),
     None),
    ("previous-hash-twice", "es_paid", P.Released.TOPIC, given_twice("previous_hash", b"null"),
     ProblemKind.UNCHAINED_AFTER_CHAINED),
    # the mapper upcasts from "version True" and finds no such upcaster
    ("class-version-true", "es_retry", P.PayoutStarted.TOPIC,
     lambda b: b.replace(b'"class_version":3', b'"class_version":true'), ProblemKind.UNDECODABLE),
    ("key-more-of-no-known-type", "es_paid", P.Released.TOPIC,
     lambda b: b[:-1] + b',"note":{"_type_":"no_such_type","_data_":"1"}}',
     ProblemKind.UNDECODABLE),
    ("escaped-text", "es_paid", P.TransferSucceeded.TOPIC,
     lambda b: b.replace(b'"tr_', b'"\\u0074r_', 1), None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("service", "topic", "change", "kind"),
    [pytest.param(*case[1:], id=case[0]) for case in RAW_CASES],
)
def test_stored_bytes_are_read_as_the_mapper_reads_them(
    service: str | None,
    topic: str,
    change: Callable[[bytes], bytes],
    kind: ProblemKind | None,
    ledger: PayoutLedger,
    sealed: SealInfo,
    raw: RawStore,
) -> None:
    """A state the fast reading may take (declared keys, some given twice, times, escapes):
    verify finds what the mapper's reading finds, and the audit equals the mapper's."""
    nid = target(ledger, raw, service, topic)
    state = raw.row(nid).state
    raw.set_state(nid, change(state))
    assert raw.row(nid).state != state

    report = verify_ledger(ledger)
    found = [p.kind for p in report.problems if p.notification_id == nid]
    assert found == ([] if kind is None else [kind]), report.problems
    assert not verify_ledger(ledger, anchors=[sealed.seal_digest]).ok  # the edit is seen
    assert without_reasons(audit_ledger(ledger)) == without_reasons(
        audit_ledger(ledger, decode="mapper")
    )


def without_reasons(report: AuditReport) -> AuditReport:
    """``report`` without the text of why an event is undecodable: each reading words the
    error its decoder raised."""
    return replace(
        report,
        violations=[
            replace(v, detail="") if v.kind is ViolationKind.UNDECODABLE else v
            for v in report.violations
        ],
    )


def test_a_stored_state_that_is_not_a_json_object_is_undecodable(
    ledger: PayoutLedger, sealed: SealInfo, raw: RawStore
) -> None:
    """A JSON array (or number) where an event's object belongs: undecodable, not a crash."""
    nid = target(ledger, raw, "es_paid", P.PayoutStarted.TOPIC)
    raw.set_state(nid, b"[1,2]")

    report = verify_ledger(ledger)
    assert [p.notification_id for p in report.problems if p.kind is ProblemKind.UNDECODABLE] == [
        nid
    ]
    audit = audit_ledger(ledger)
    assert (ViolationKind.UNDECODABLE, nid) in [
        (v.kind, v.notification_id) for v in audit.violations
    ]
    seal_ledger(ledger)
    export_events(ledger, io.StringIO())


def test_the_commands_exit_with_their_finding_code_and_no_traceback(
    ledger: PayoutLedger, sealed: SealInfo, raw: RawStore, durable_store_url: str
) -> None:
    """verify and audit exit 1, export exits 1 naming the event, seal seals (exit 0)."""
    started = target(ledger, raw, "es_paid", P.PayoutStarted.TOPIC)
    raw.edit(started, setting("amount", "5000"))
    seal_row = target(ledger, raw, None, LedgerSeal.Sealed.TOPIC)
    raw.edit(seal_row, setting("event_count", "12"))
    env = {"PAYOUT_LEDGER_STORE_URL": durable_store_url}
    runner = CliRunner()

    results = {
        name: runner.invoke(app, args, env=env)
        for name, args in {
            "verify": ["verify", "--json"],
            "audit": ["audit", "--json"],
            "export": ["export"],
            "export-csv": ["export", "--format", "csv"],
            "export-payouts": ["export", "--what", "payouts"],
            "audit-text": ["audit"],
            "verify-text": ["verify"],
        }.items()
    }
    sealing = runner.invoke(app, ["seal", "--json"], env=env)

    for name, result in {**results, "seal": sealing}.items():
        assert result.exception is None or isinstance(result.exception, SystemExit), name
        assert "Traceback" not in result.output, name
    assert sealing.exit_code == 0, sealing.output
    assert {n: r.exit_code for n, r in results.items()} == {
        "verify": 1,
        "audit": 1,
        "export": 1,
        "export-csv": 1,
        "export-payouts": 1,
        "audit-text": 1,
        "verify-text": 1,
    }
    verified = json.loads(results["verify"].stdout)
    assert {"kind": "ill_typed", "notification_id": started} in [
        {k: p[k] for k in ("kind", "notification_id")} for p in verified["problems"]
    ]
    assert {"kind": "ill_typed", "notification_id": seal_row} in [
        {k: p[k] for k in ("kind", "notification_id")} for p in verified["problems"]
    ]
    audited = json.loads(results["audit"].stdout)
    found = [(v["kind"], v["notification_id"]) for v in audited["violations"]]
    assert found[0] == ("ill_typed", started)  # its payout's later events follow no attempt
    assert [f for f in found if f[0] == "ill_typed"] == [("ill_typed", started)]
    rows = list(csv.DictReader(io.StringIO(results["export-csv"].stdout)))
    assert "ill-typed" in next(r for r in rows if r["notification_id"] == str(started))["error"]
    assert f"notification {started}" in results["export"].stderr


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("originator_id", "not-a-uuid"),
        ("originator_id", 42),
        ("originator_version", "two"),
        ("topic", 7),
        ("state", "text, not bytes"),
    ],
)
def test_an_sqlite_row_whose_columns_have_impossible_types_is_a_finding(
    providers: InMemoryProviderDirectory,
    sqlite_url: str,
    gateway: InMemoryTransferGateway,
    column: str,
    value: object,
) -> None:
    """SQLite lets any column hold any type: the auditor's commands report such a row."""
    settings = LedgerSettings(store_url=sqlite_url)
    ledger = PayoutLedger(settings=settings, providers=providers, gateway=gateway)
    run_scenario(ledger, gateway)
    anchor = ledger.seal().seal_digest
    nid = notification_ids(ledger, ledger.payout_id("es_paid"))[0]
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        conn.execute(f"UPDATE stored_events SET {column} = ? WHERE rowid = ?", (value, nid))

    report = verify_ledger(ledger, anchors=[anchor])
    audit = audit_ledger(ledger)
    seal_ledger(ledger)
    export_events(ledger, io.StringIO())

    ledger.close()
    assert not report.ok
    assert nid in {p.notification_id for p in report.problems}
    assert not audit.ok

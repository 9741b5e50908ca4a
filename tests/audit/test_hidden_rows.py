"""Rows the readers in notification order could miss, on PostgreSQL and SQLite.

The ledger's database login owns its table (it creates it), so an attacker with
that login can drop ``notification_id``'s NOT NULL and set ids to NULL: every
reader that pages by notification id skips such a row, while the ledger loads it
with its payout. It can also store NULLs in other columns, or put a row at the
smallest id there is.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable

import psycopg
import pytest

from payout_ledger import (
    ConfigurationError,
    PayoutAggregate,
    PayoutLedger,
    TransferOutcomeUnknown,
)
from payout_ledger.audit import (
    ProblemKind,
    ViolationKind,
    audit_ledger,
    export_events,
    seal_ledger,
    verify_ledger,
)
from payout_ledger.testing import InMemoryTransferGateway
from tests.audit.scenario import release, run_scenario
from tests.audit.support import RawStore, notification_ids
from tests.conftest import _conninfo


def _table(postgres_url: str) -> tuple[str, str]:
    schema = dict(p.split("=", 1) for p in postgres_url.split("?", 1)[1].split("&"))["schema"]
    return _conninfo(postgres_url), f"{schema}.payoutledger_events"


@pytest.fixture
def store_url(postgres_url: str) -> str:
    return postgres_url


@pytest.mark.postgres
def test_a_row_whose_notification_id_was_set_to_null_is_found_by_verify_and_audit(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, postgres_url: str
) -> None:
    """The trial's case: a forged TransferFailed hidden under a NULL id, then a re-release."""
    assert ledger.release_payment(release("es_1")).success
    anchor = ledger.seal().seal_digest
    payout = ledger.get_payout("es_1")
    payout.trigger_event(
        PayoutAggregate.TransferFailed,
        attempt=payout.attempt,
        idempotency_key=payout.idempotency_key,
        failure_code="card_declined",
        failure_message="forged",
        stripe_request_id=None,
    )
    ledger.save(payout)
    conninfo, table = _table(postgres_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {table} ALTER COLUMN notification_id DROP NOT NULL")
        conn.execute(
            f"UPDATE {table} SET notification_id = NULL WHERE originator_version = %s",
            (payout.version,),
        )

    report = verify_ledger(ledger, anchors=[anchor])
    audit = audit_ledger(ledger)
    errors: list[object] = []
    export_events(ledger, io.StringIO(), on_error=lambda nid, e: errors.append((nid, e)))

    assert [p.kind for p in report.problems] == [ProblemKind.HIDDEN_ROW]
    assert report.problems[0].originator_id == str(payout.id)
    assert [v.kind for v in audit.violations] == [ViolationKind.HIDDEN_ROW]
    assert errors and errors[0][0] is None
    assert len(gateway.transfers) == 1


@pytest.mark.postgres
def test_a_null_state_or_topic_is_a_finding_and_the_other_payouts_are_resumed(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, postgres_url: str
) -> None:
    gateway.fail_next(TransferOutcomeUnknown("timeout"), times=2)
    ledger.release_payment(release("es_1"))
    ledger.release_payment(release("es_2"))
    [broken] = notification_ids(ledger, ledger.payout_id("es_1"))
    conninfo, table = _table(postgres_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {table} ALTER COLUMN state DROP NOT NULL")
        conn.execute(f"UPDATE {table} SET state = NULL WHERE notification_id = %s", (broken,))

    report = verify_ledger(ledger)
    audit = audit_ledger(ledger)
    seal_ledger(ledger)
    export_events(ledger, io.StringIO())
    results = {r.event_service_id: r for r in ledger.resume_in_flight()}

    assert broken in {p.notification_id for p in report.problems}
    assert broken in {v.notification_id for v in audit.violations}
    assert results["es_2"].success
    assert len(gateway.transfers) == 1


def test_a_row_at_the_smallest_notification_id_is_read(
    durable_store_url: str, make_ledger: object, gateway: InMemoryTransferGateway
) -> None:
    """-2**63 is an id like any other: the audit reads it, verify and resume too."""
    from payout_ledger import LedgerSettings
    from payout_ledger.testing import InMemoryProviderDirectory
    from tests.audit.scenario import CAROL
    from tests.support import ALICE

    with PayoutLedger(
        settings=LedgerSettings(store_url=durable_store_url),
        providers=InMemoryProviderDirectory([ALICE, CAROL]),
        gateway=gateway,
    ) as ledger:
        gateway.fail_next(TransferOutcomeUnknown("timeout"))
        ledger.release_payment(release("es_low"))
        [claim] = notification_ids(ledger, ledger.payout_id("es_low"))
        raw = RawStore(durable_store_url)
        row = raw.row(claim)
        raw.delete(claim)
        raw.insert(-(2**63), row)

        audit = audit_ledger(ledger, decode="states")
        assert audit.events == 2  # the store's mode and the claim
        assert [f.event_service_id for f in audit.in_flight] == ["es_low"]
        assert audit == audit_ledger(ledger, decode="mapper")
        assert ledger.in_flight() == ["es_low"]
        [resumed] = ledger.resume_in_flight()
        assert resumed.success


@pytest.mark.postgres
@pytest.mark.parametrize(
    "retype",
    [
        "TYPE text USING convert_from(state, 'UTF8')",
        "TYPE jsonb USING convert_from(state, 'UTF8')::jsonb",
    ],
    ids=["text", "jsonb"],
)
def test_a_state_column_retyped_is_reported_by_verify_not_a_traceback(
    ledger: PayoutLedger,
    make_ledger: Callable[..., PayoutLedger],
    gateway: InMemoryTransferGateway,
    postgres_url: str,
    retype: str,
) -> None:
    """Someone with the ledger's login retypes the stored states: every event is a finding,
    and the auditor's commands answer with them instead of failing to open the store."""
    from typer.testing import CliRunner

    from payout_ledger.cli import app

    run_scenario(ledger, gateway)
    events = verify_ledger(ledger).events
    conninfo, table = _table(postgres_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {table} ALTER COLUMN state {retype}")
    env = {"PAYOUT_LEDGER_STORE_URL": postgres_url}

    verified = CliRunner().invoke(app, ["verify", "--json"], env=env)
    audited = CliRunner().invoke(app, ["audit", "--json"], env=env)

    assert verified.exit_code == 1, verified.output
    problems = json.loads(verified.stdout)["problems"]
    assert {p["kind"] for p in problems} == {"undecodable"}
    assert len(problems) == events
    assert audited.exit_code == 1, audited.output
    assert json.loads(audited.stdout)["ok"] is False
    # No payout is paid twice, and nothing is paid unseen. A ledger already open that
    # read the provider's account as payable within its window may release once more;
    # its claim cannot be read back, so the same release again fails; a ledger opened
    # now refuses; what was written meanwhile is a finding like every other event.
    transfers = len(gateway.transfers)
    with contextlib.suppress(Exception):
        ledger.release_payment(release("es_after_retyping"))
    with pytest.raises(Exception):  # noqa: B017, PT011 - the driver's or the mapper's error
        ledger.release_payment(release("es_after_retyping"))
    with (
        make_ledger() as reopened,
        pytest.raises(ConfigurationError, match="run payout-ledger verify"),
    ):
        reopened.release_payment(release("es_after_retyping"))
    assert len(gateway.transfers) <= transfers + 1
    with psycopg.connect(conninfo) as conn:
        stored = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    again = CliRunner().invoke(app, ["verify", "--json"], env=env)
    assert again.exit_code == 1, again.output
    assert stored is not None and len(json.loads(again.stdout)["problems"]) == stored[0]

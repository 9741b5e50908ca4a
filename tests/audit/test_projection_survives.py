"""The read model survives any event the log can hold, and a rebuild never empties it.

An event the table cannot hold (undecodable, ill-typed, beyond PostgreSQL's
``bigint`` or ``integer``, text with NUL or a lone surrogate, a service id that
is not its payout's) is logged, counted in ``ProjectionRun.skipped`` and left
out; every other row is projected. ``rebuild`` builds a fresh table and swaps it
in only once it is complete, so a rebuild that fails leaves the old rows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

import payout_ledger.adapters.projection.rebuild as rebuild_module
from payout_ledger import PayoutAggregate, PayoutLedger
from payout_ledger.adapters.projection import (
    PAYOUT_TOPICS,
    PayoutsProjection,
    open_payouts_view,
    run_projection,
)
from payout_ledger.adapters.projection.postgres import PostgresRowWriter
from payout_ledger.adapters.projection.sqlite import SQLiteRowWriter
from payout_ledger.cli import app
from payout_ledger.testing import InMemoryTransferGateway
from tests.audit.scenario import run_scenario
from tests.audit.support import RawStore, notification_ids
from tests.audit.test_projection import TINY, as_compared, expected_rows, sqlite_or_postgres

P = PayoutAggregate


@pytest.fixture
def store_url(durable_store_url: str) -> str:
    return durable_store_url


@pytest.fixture
def history(ledger: PayoutLedger, gateway: InMemoryTransferGateway) -> PayoutLedger:
    run_scenario(ledger, gateway)
    return ledger


def payout_events(ledger: PayoutLedger) -> int:
    return len(ledger.recorder.select_notifications(None, 100_000, topics=PAYOUT_TOPICS))


def first_of(ledger: PayoutLedger, raw: RawStore, service: str, topic: str) -> int:
    ids = notification_ids(ledger, ledger.payout_id(service))
    return next(n for n in ids if raw.row(n).topic == topic)


Change = Callable[[dict[str, Any]], None]


def setting(key: str, value: object) -> Change:
    return lambda state: state.__setitem__(key, value)


# (case, service, topic, change, whether the payout's row is left out entirely)
CASES: list[tuple[str, str, str, Change, bool]] = [
    ("amount-2**63", "es_paid", P.PayoutStarted.TOPIC, setting("amount", 2**63), True),
    ("amount-minus-2**63-1", "es_paid", P.PayoutStarted.TOPIC,
     setting("amount", -(2**63) - 1), True),
    ("amount-string", "es_paid", P.PayoutStarted.TOPIC, setting("amount", "5000"), True),
    ("amount-float", "es_paid", P.PayoutStarted.TOPIC, setting("amount", 5000.5), True),
    ("attempt-2**31", "es_paid", P.PayoutStarted.TOPIC, setting("attempt", 2**31), True),
    ("attempt-true", "es_paid", P.PayoutStarted.TOPIC, setting("attempt", True), True),
    ("nul-in-provider", "es_paid", P.PayoutStarted.TOPIC,
     setting("provider_id", "prov\x00alice"), True),
    ("surrogate-in-provider", "es_paid", P.PayoutStarted.TOPIC,
     setting("provider_id", "prov\ud800"), True),
    ("missing-currency", "es_paid", P.PayoutStarted.TOPIC, lambda s: s.pop("currency"), True),
    ("other-service-id", "es_paid", P.PayoutStarted.TOPIC,
     setting("event_service_id", "es_retry"), True),
    ("reversed-2**63", "es_reversed", P.TransferReversed.TOPIC,
     setting("amount_reversed", 2**63), False),
    ("transfer-id-list", "es_paid", P.TransferSucceeded.TOPIC,
     setting("transfer_id", ["tr"]), False),
    ("failure-code-nul", "es_retry", P.TransferFailed.TOPIC,
     setting("failure_code", "card\x00"), False),
]  # fmt: skip


@pytest.mark.parametrize("rebuild", [False, True], ids=["batches", "rebuild"])
@pytest.mark.parametrize(
    ("service", "topic", "change", "row_left_out"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_an_event_the_table_cannot_hold_is_skipped_and_counted(
    history: PayoutLedger,
    raw: RawStore,
    service: str,
    topic: str,
    change: Change,
    row_left_out: bool,
    rebuild: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The run ends; the event is logged and counted; every other payout is projected
    (applying batches, or rebuilding the table)."""
    nid = first_of(history, raw, service, topic)
    raw.edit(nid, change)

    with caplog.at_level(logging.WARNING, logger="payout_ledger.adapters.projection"):
        run = run_projection(history, batch_size=4, rebuild=rebuild)

    assert run.skipped == 1
    assert run.events + run.skipped == payout_events(history)
    assert any(str(nid) in r.getMessage() for r in caplog.records)
    rows = {r["event_service_id"]: r for r in as_compared(open_payouts_view(history).rows())}
    expected = {r["event_service_id"]: r for r in expected_rows_except(history, service)}
    assert {k: v for k, v in rows.items() if k != service} == expected
    assert (service in rows) is not row_left_out


def expected_rows_except(ledger: PayoutLedger, service: str) -> list[dict[str, Any]]:
    """Rows of every payout but ``service``'s, replayed with the ledger's own code."""
    rows = []
    for other in ("es_paid", "es_retry", "es_failed", "es_inflight", "es_lost", "es_reversed"):
        if other == service:
            continue
        p = ledger.get_payout(other)
        rows.append(
            {
                "payout_id": str(p.id),
                "event_service_id": p.event_service_id,
                "provider_id": p.provider_id,
                "payee_user_id": p.payee_user_id,
                "destination_account": p.destination_account,
                "amount": p.amount,
                "currency": p.currency,
                "status": p.status.value,
                "attempt": p.attempt,
                "transfer_id": p.transfer_id,
                "amount_reversed": p.amount_reversed,
                "failure_code": p.failure_code,
                "released_at": p.released_at,
                "updated_at": p.modified_on,
                "version": p.version,
                "reversal_attempt": p.reversal_attempt,
                "reversal_status": p.reversal_status.value if p.reversal_status else None,
            }
        )
    return rows


@pytest.mark.parametrize("rebuild", [False, True], ids=["batches", "rebuild"])
def test_an_undecodable_event_is_skipped_and_counted(
    history: PayoutLedger, raw: RawStore, rebuild: bool
) -> None:
    nid = first_of(history, raw, "es_paid", P.Released.TOPIC)
    raw.set_state(nid, b"\xff\x00 not json")

    run = run_projection(history, rebuild=rebuild)

    assert run.skipped == 1
    row = open_payouts_view(history).get("es_paid")
    assert row is not None and row.status == "transferred"  # stopped before its Released
    assert open_payouts_view(history).count() == 6


def test_the_project_command_survives_the_outside_trials_claim(
    history: PayoutLedger, raw: RawStore, store_url: str
) -> None:
    """A claim of 2**63 usd stored in the log: `project` and `project --rebuild` still work,
    and say so."""
    raw.edit(first_of(history, raw, "es_paid", P.PayoutStarted.TOPIC), setting("amount", 2**63))
    env = {"PAYOUT_LEDGER_STORE_URL": store_url}

    first = CliRunner().invoke(app, ["project"], env=env)
    again = CliRunner().invoke(app, ["project"], env=env)
    rebuilt = CliRunner().invoke(app, ["project", "--rebuild"], env=env)

    # The bad claim is a finding (exit 1, named in the log); the rest is projected.
    for result in (first, rebuilt):
        assert result.exit_code == 1, result.output
        assert "1 event the read model cannot hold" in result.output
        assert "Traceback" not in result.output
    assert again.exit_code == 0, again.output  # nothing new to project
    assert open_payouts_view(history).count() == 5


class FailingProjection(PayoutsProjection):
    """Dies after ``fail_after`` folded events (a rebuild that cannot finish)."""

    fail_after = 0
    folded = 0

    def fold(self, row: dict[str, Any] | None, event: Any, notification_id: int) -> Any:
        type(self).folded += 1
        if type(self).folded > self.fail_after:
            raise RuntimeError("the rebuild died")
        return super().fold(row, event, notification_id)


@pytest.mark.parametrize("fail_after", [0, 5])
def test_a_failed_rebuild_keeps_the_old_rows(
    history: PayoutLedger, monkeypatch: pytest.MonkeyPatch, fail_after: int
) -> None:
    """Until a rebuild is complete, readers see the old table, and after it fails too."""
    view = open_payouts_view(history)
    run_projection(history, view=view)
    before, tracked = view.rows(), view.max_tracking_id(history.name)
    monkeypatch.setattr(FailingProjection, "fail_after", fail_after)
    monkeypatch.setattr(FailingProjection, "folded", 0)

    with pytest.raises(RuntimeError, match="died"):
        run_projection(
            history, view=view, rebuild=True, projection_class=FailingProjection, batch_size=3
        )

    assert view.rows() == before
    assert view.max_tracking_id(history.name) == tracked
    assert leftover_tables(history.settings.store_url) == []


def test_a_rebuild_replaces_the_table_whole(history: PayoutLedger) -> None:
    """After a rebuild: the same rows, the same indexes, no staging table, tracking at the end."""
    view = open_payouts_view(history)
    run_projection(history, view=view)
    with sqlite_or_postgres(history.settings.store_url) as (cursor, table):
        cursor.execute(f"UPDATE {table} SET status = 'tampered'")
    indexes = index_names(history.settings.store_url)

    rebuilt = run_projection(history, view=view, rebuild=True, batch_size=4)

    assert rebuilt.events == payout_events(history)
    assert rebuilt.skipped == 0
    assert as_compared(view.rows()) == expected_rows(history)
    assert view.max_tracking_id(history.name) == rebuilt.tracking_id
    assert index_names(history.settings.store_url) == indexes
    assert leftover_tables(history.settings.store_url) == []
    assert run_projection(history, view=view).events == 0


def test_a_rebuild_of_an_empty_log_empties_the_table(ledger: PayoutLedger) -> None:
    view = open_payouts_view(ledger)
    rebuilt = run_projection(ledger, view=view, rebuild=True)
    assert (rebuilt.events, rebuilt.tracking_id, view.count()) == (0, None, 0)


def index_names(store_url: str) -> list[str]:
    with sqlite_or_postgres(store_url) as (cursor, table):
        name = table.split(".")[-1]
        if store_url.startswith("sqlite"):
            cursor.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                "AND name NOT LIKE 'sqlite_%'",
                (name,),
            )
        else:
            cursor.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s "
                "AND indexname LIKE %s",
                (table.split(".")[0], name, "%_idx"),
            )
        return sorted(r[0] for r in cursor.fetchall())


def leftover_tables(store_url: str) -> list[str]:
    """Tables of the read model other than the table itself and its tracking table."""
    with sqlite_or_postgres(store_url) as (cursor, table):
        name = table.split(".")[-1]
        if store_url.startswith("sqlite"):
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        else:
            cursor.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (table.split(".")[0],)
            )
        names = [r[0] for r in cursor.fetchall()]
    return sorted(n for n in names if n.startswith(name) and n not in {name, f"{name}_tracking"})


@pytest.mark.parametrize(
    "change",
    [setting("amount", 2**63), setting("provider_id", "prov\ud800")],
    ids=["amount-2**63", "surrogate"],
)
def test_a_row_the_database_refuses_leaves_out_only_its_event(
    history: PayoutLedger, raw: RawStore, monkeypatch: pytest.MonkeyPatch, change: Change
) -> None:
    """Past the checks (a case they miss), the batch is retried one event at a time."""
    import payout_ledger.adapters.projection.runner as runner_module

    monkeypatch.setattr(runner_module, "unprojectable", lambda event: None)
    raw.edit(first_of(history, raw, "es_paid", P.PayoutStarted.TOPIC), change)

    run = run_projection(history, batch_size=50)

    assert run.skipped == 1
    assert run.events + run.skipped == payout_events(history)
    rows = {r["event_service_id"]: r for r in as_compared(open_payouts_view(history).rows())}
    assert "es_paid" not in rows
    assert rows == {r["event_service_id"]: r for r in expected_rows_except(history, "es_paid")}


def test_a_stopped_rebuild_keeps_the_old_rows(history: PayoutLedger) -> None:
    view = open_payouts_view(history)
    run_projection(history, view=view)
    with sqlite_or_postgres(history.settings.store_url) as (cursor, table):
        cursor.execute(f"UPDATE {table} SET status = 'kept'")
    before = view.rows()
    stop = threading.Event()

    stopped = run_projection(
        history, view=view, rebuild=True, batch_size=2, stop=stop, on_batch=lambda *_: stop.set()
    )

    assert view.rows() == before
    assert stopped.tracking_id == view.max_tracking_id(history.name)
    assert leftover_tables(history.settings.store_url) == []


def test_a_crashed_rebuilds_table_is_dropped_by_the_next_rebuild(history: PayoutLedger) -> None:
    """A process killed mid-rebuild leaves its table; the next complete rebuild drops it."""
    view = open_payouts_view(history)
    crashed = view.staging()
    assert leftover_tables(history.settings.store_url) == sorted(
        [crashed.table, f"{crashed.table}_tracking"]
    )

    run_projection(history, view=view, rebuild=True)

    assert leftover_tables(history.settings.store_url) == []
    assert as_compared(view.rows()) == expected_rows(history)


@pytest.mark.parametrize("where", ["fold", "writer"])
def test_a_fast_rebuild_that_fails_keeps_the_old_rows(
    history: PayoutLedger, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Whether the fold or the writer's thread fails, midway: the old table, its
    tracking record and no leftover table."""
    view = open_payouts_view(history)
    run_projection(history, view=view)
    with sqlite_or_postgres(history.settings.store_url) as (cursor, table):
        cursor.execute(f"UPDATE {table} SET status = 'old'")
    before, tracked = view.rows(), view.max_tracking_id(history.name)
    for name, value in TINY.items():
        monkeypatch.setattr(rebuild_module, name, value)
    calls = {"n": 0}

    def failing(original: Any) -> Any:
        def call(*args: Any) -> Any:
            calls["n"] += 1
            if calls["n"] > 4:
                raise RuntimeError("the rebuild died")
            return original(*args)

        return call

    if where == "fold":
        monkeypatch.setattr(rebuild_module._Folder, "fold", failing(rebuild_module._Folder.fold))
    else:
        sqlite = history.settings.store_url.startswith("sqlite")
        writer = SQLiteRowWriter if sqlite else PostgresRowWriter
        monkeypatch.setattr(writer, "_write", failing(writer._write))

    with pytest.raises(RuntimeError, match="died"):
        run_projection(history, view=view, rebuild=True)

    assert view.rows() == before
    assert view.max_tracking_id(history.name) == tracked
    assert calls["n"] > 4
    assert leftover_tables(history.settings.store_url) == []
    monkeypatch.undo()
    assert run_projection(history, view=view, rebuild=True).events == payout_events(history)
    assert as_compared(view.rows()) == expected_rows(history)

"""The payouts read model: a table kept by a tracked projection, exactly once, resumable."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from typer.testing import CliRunner

from payout_ledger import ConfigurationError, LedgerSettings, PayoutAggregate, PayoutLedger
from payout_ledger.adapters.projection import (
    PAYOUT_TOPICS,
    PayoutRow,
    PayoutsProjection,
    open_payouts_view,
    run_projection,
)
from payout_ledger.cli import app
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.audit.scenario import release, run_reversal_scenario, run_scenario
from tests.audit.support import replay_all


@pytest.fixture
def store_url(durable_store_url: str) -> str:
    """The read model lives in the events' database: SQLite or PostgreSQL."""
    return durable_store_url


@pytest.fixture
def history(ledger: PayoutLedger, gateway: InMemoryTransferGateway) -> PayoutLedger:
    """The ledger, with the scenario written and a second round of payouts after it,
    platform reversals included."""
    run_scenario(ledger, gateway)
    run_reversal_scenario(ledger, gateway)
    run_scenario(ledger, gateway, prefix="b_")
    return ledger


def payout_events(ledger: PayoutLedger) -> int:
    return len(ledger.recorder.select_notifications(None, 100_000, topics=PAYOUT_TOPICS))


def expected_rows(ledger: PayoutLedger) -> list[dict[str, Any]]:
    """What each row must say, from the payouts replayed through their own ``apply``."""
    payouts = [a for a in replay_all(ledger).values() if isinstance(a, PayoutAggregate)]
    return sorted(
        (
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
            for p in payouts
        ),
        key=lambda r: r["event_service_id"],
    )


def as_compared(rows: list[PayoutRow]) -> list[dict[str, Any]]:
    return [{k: v for k, v in vars(r).items() if k != "notification_id"} for r in rows]


def test_the_read_model_has_one_row_per_event_service_as_replayed(history: PayoutLedger) -> None:
    """Status, amount, currency, destination, payee, transfer, reversal and times match."""
    run = run_projection(history, batch_size=7)

    view = open_payouts_view(history)
    assert as_compared(view.rows()) == expected_rows(history)
    assert run.events == payout_events(history)
    assert run.tracking_id == max(r.notification_id for r in view.rows())


def test_running_again_applies_nothing_twice(history: PayoutLedger) -> None:
    """A second run finds the tracking record at the end and changes nothing."""
    run_projection(history)
    before = open_payouts_view(history).rows()

    again = run_projection(history)

    assert again.events == 0
    assert open_payouts_view(history).rows() == before


class CrashingProjection(PayoutsProjection):
    """Dies in the middle of a batch after ``crash_after`` events."""

    crash_after = 0
    folded = 0

    def fold(self, row: dict[str, Any] | None, event: Any, notification_id: int) -> Any:
        type(self).folded += 1
        if type(self).folded > self.crash_after:
            raise RuntimeError("the projection process died")
        return super().fold(row, event, notification_id)


def test_a_crash_mid_run_resumes_and_ends_equal_to_a_fresh_replay(
    history: PayoutLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crashed batch is not committed; the next run resumes after the last committed one."""
    total, batch = payout_events(history), 4
    crash_after = total // 2
    monkeypatch.setattr(CrashingProjection, "crash_after", crash_after)
    monkeypatch.setattr(CrashingProjection, "folded", 0)
    view = open_payouts_view(history)

    with pytest.raises(RuntimeError, match="died"):
        run_projection(history, view=view, projection_class=CrashingProjection, batch_size=batch)

    committed = crash_after // batch * batch
    tracked = view.max_tracking_id(history.name)
    assert tracked is not None and tracked == history_rows(history)[committed - 1].id
    assert all(r.notification_id <= tracked for r in view.rows())
    resumed = run_projection(history, view=view, batch_size=batch)
    fresh = open_payouts_view(history, table="payouts_fresh")
    run_projection(history, view=fresh)

    assert resumed.events == total - committed
    assert view.rows() == fresh.rows()
    assert as_compared(view.rows()) == expected_rows(history)


def history_rows(ledger: PayoutLedger) -> list[Any]:
    return list(ledger.recorder.select_notifications(None, 100_000, topics=PAYOUT_TOPICS))


def test_two_runners_at_once_apply_each_event_exactly_once(
    history: PayoutLedger, store_url: str, providers: InMemoryProviderDirectory
) -> None:
    """Competing runners, in separate ledgers, apply every event once between them."""
    applied: list[int] = []
    errors: list[BaseException] = []

    def runner() -> None:
        try:
            with PayoutLedger(
                settings=LedgerSettings(store_url=store_url, stripe_enabled=False),
                providers=providers,
            ) as ledger:
                applied.append(run_projection(ledger, batch_size=2).events)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not errors
    assert sum(applied) == payout_events(history)
    assert as_compared(open_payouts_view(history).rows()) == expected_rows(history)


def test_following_the_log_projects_new_payouts(history: PayoutLedger) -> None:
    """``follow`` keeps polling: a payout released later reaches the table."""
    view = open_payouts_view(history)
    stop = threading.Event()
    follower = threading.Thread(
        target=run_projection,
        kwargs={
            "ledger": history,
            "view": view,
            "follow": True,
            "poll_interval": 0.05,
            "stop": stop,
        },
    )
    follower.start()
    try:
        history.release_payment(release("es_later"))
        view.wait(history.name, history.recorder.max_notification_id(), timeout=30)
    finally:
        stop.set()
        follower.join()

    row = view.get("es_later")
    assert row is not None and row.status == "released"


def test_rebuild_starts_from_scratch(history: PayoutLedger) -> None:
    """``rebuild`` empties the table and its tracking, then replays the whole log."""
    run_projection(history)
    view = open_payouts_view(history)
    with sqlite_or_postgres(history.settings.store_url) as (cursor, table):
        cursor.execute(f"UPDATE {table} SET status = 'tampered'")

    rebuilt = run_projection(history, rebuild=True)

    assert rebuilt.events == payout_events(history)
    assert as_compared(view.rows()) == expected_rows(history)


def test_hosts_query_the_table_with_plain_sql(history: PayoutLedger) -> None:
    """The documented query: released payouts of a provider, newest first."""
    run_projection(history)
    expected = sorted(
        (
            (r["event_service_id"], r["amount"], r["currency"], r["transfer_id"])
            for r in expected_rows(history)
            if r["status"] == "released" and r["provider_id"] == "prov_alice"
        ),
    )

    with sqlite_or_postgres(history.settings.store_url) as (cursor, table):
        cursor.execute(
            f"SELECT event_service_id, amount, currency, transfer_id FROM {table} "
            "WHERE provider_id = 'prov_alice' AND status = 'released' "
            "ORDER BY updated_at DESC"
        )
        rows = cursor.fetchall()

    assert sorted(tuple(r) for r in rows) == expected
    assert len(rows) == len(expected) > 0


def test_the_ledger_works_without_the_read_model(history: PayoutLedger) -> None:
    """Releasing and auditing never create the table; only a projection does."""
    assert not table_exists(history.settings.store_url)

    run_projection(history)

    assert table_exists(history.settings.store_url)


def table_exists(store_url: str) -> bool:
    with sqlite_or_postgres(store_url) as (cursor, table):
        if store_url.startswith("sqlite"):
            cursor.execute("SELECT count(*) FROM sqlite_master WHERE name = ?", (table,))
        else:
            cursor.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname || '.' || tablename = %s", (table,)
            )
        return bool(cursor.fetchone()[0])


def test_the_read_model_needs_a_database(providers: InMemoryProviderDirectory) -> None:
    """The in-memory store has no tables to project into."""
    with (
        PayoutLedger(
            settings=LedgerSettings(store_url="memory://", stripe_enabled=False),
            providers=providers,
        ) as ledger,
        pytest.raises(ConfigurationError, match="SQLite or PostgreSQL"),
    ):
        open_payouts_view(ledger)


def test_the_project_command_rebuilds_the_table(history: PayoutLedger, store_url: str) -> None:
    """`payout-ledger project --rebuild` reports the events applied and fills the table."""
    env = {"PAYOUT_LEDGER_STORE_URL": store_url}

    result = CliRunner().invoke(app, ["project", "--rebuild"], env=env)

    assert result.exit_code == 0, result.output
    assert f"{payout_events(history)} events applied" in result.output
    assert as_compared(open_payouts_view(history).rows()) == expected_rows(history)


class sqlite_or_postgres:  # noqa: N801 - used as a context manager, like a function
    """A raw cursor on the ledger's database, and the read model's qualified table name."""

    def __init__(self, store_url: str) -> None:
        self.url = store_url

    def __enter__(self) -> tuple[Any, str]:
        parts = urlsplit(self.url)
        if parts.scheme == "sqlite":
            self.conn: Any = sqlite3.connect(self.url[len("sqlite:///") :])
            return self.conn.cursor(), "payout_ledger_payouts"
        query = dict(parse_qsl(parts.query))
        schema = query.pop("schema")
        self.conn = psycopg.connect(urlunsplit(parts._replace(query=urlencode(query))))
        return self.conn.cursor(), f"{schema}.payout_ledger_payouts"

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.conn.commit()
        self.conn.close()

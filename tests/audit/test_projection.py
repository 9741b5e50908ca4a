"""The payouts read model: a table kept by a tracked projection, exactly once, resumable."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from typer.testing import CliRunner

import payout_ledger.adapters.projection.rebuild as rebuild_module
import payout_ledger.adapters.projection.runner as runner_module
from payout_ledger import ConfigurationError, LedgerSettings, PayoutAggregate, PayoutLedger
from payout_ledger.adapters.projection import (
    PAYOUT_TOPICS,
    PayoutRow,
    PayoutsProjection,
    open_payouts_view,
    run_projection,
)
from payout_ledger.adapters.projection.view import json_rows
from payout_ledger.cli import app
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.audit.scenario import (
    deliver,
    release,
    run_reversal_scenario,
    run_scenario,
    transfer_event,
)
from tests.audit.support import RawStore, replay_all


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


# -- the fast rebuild: the same table as folding the log event by event ----------------

P = PayoutAggregate
TINY = {"_PAGE_SIZE": 3, "_FLUSH_ROWS": 2, "_CACHED_ROWS": 1}
"""Sizes that make the fast rebuild write a batch every page and forget every row
but one: later events read their payout's row back from the new table."""


@pytest.fixture(params=["default", "tiny"])
def sizes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The fast rebuild's page, batch and memory sizes: its own, or tiny ones."""
    if request.param == "tiny":
        for name, value in TINY.items():
            monkeypatch.setattr(rebuild_module, name, value)
    return str(request.param)


@pytest.fixture
def fast_folds(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """How many events each fast rebuild folded (None: it failed, or was stopped): a
    test that expects a fast rebuild fails if none ran."""
    folded: list[int | None] = []

    def fold_log(*args: Any, **kwargs: Any) -> Any:
        folded.append(None)
        tally = rebuild_module.fold_log(*args, **kwargs)
        folded[-1] = None if tally is None else tally.events
        return tally

    monkeypatch.setattr(runner_module, "fold_log", fold_log)
    return folded


def stored(ledger: PayoutLedger, topic: str, service: str, nth: int = 0) -> int:
    """The notification id of ``service``'s ``nth`` event of ``topic``."""
    payout_id = ledger.payout_id(service)
    ids = [n.id for n in history_rows(ledger) if n.originator_id == payout_id and n.topic == topic]
    return ids[nth]


def with_late_events(ledger: PayoutLedger, gateway: InMemoryTransferGateway) -> None:
    """Events of payouts started long before, at the end of the log: a reversal reported
    by Stripe, one by the platform and one Stripe refused, a failed payout's new attempt."""
    [paid] = gateway.transfers_for("es_paid")
    outside = gateway.reverse(paid.transfer_id, 2000)
    reported = transfer_event("evt_late", "transfer.reversed", outside, outside.amount_reversed)
    deliver(ledger, {**reported, "api_version": ledger.settings.stripe_api_version})
    assert ledger.reverse_payment("es_paid", 1000, reference="late").success
    gateway.decline_next("balance_insufficient")
    assert not ledger.reverse_payment("b_es_paid", 500, reference="refused").success
    assert ledger.release_payment(
        release("es_failed", provider_id="prov_carol", currency="eur")
    ).success


def with_odd_events(ledger: PayoutLedger, raw: RawStore) -> None:
    """Stored events that the fast rebuild decodes the long way, leaves to the ledger's
    mapper, or leaves out (as folding event by event does)."""

    def version_1(state: dict[str, Any]) -> None:  # before started_at, source_transaction...
        for key in ("class_version", "started_at", "source_transaction", "description"):
            state.pop(key)

    def revived(state: dict[str, Any]) -> None:  # transcoded values where the table looks not
        state["description"] = {"_type_": "decimal_str", "_data_": "1.5"}
        state["tags"] = [1, {"_type_": "uuid_hex", "_data_": "0" * 32}, {"a": [None]}]

    edits: list[tuple[str, str, int, Any]] = [
        (P.PayoutStarted.TOPIC, "es_paid", 0, version_1),
        (P.PayoutStarted.TOPIC, "b_es_paid", 0, lambda s: s.update(payee_user_id="user_\u00e9")),
        (P.PayoutStarted.TOPIC, "es_retry", 0, lambda s: s.update(destination_account='a "q"')),
        (P.PayoutStarted.TOPIC, "es_failed", 0, revived),
        (P.Released.TOPIC, "es_lost", 0,
         lambda s: s.update(note={"_type_": "no_such_type", "_data_": 1})),  # undecodable
        (P.TransferFailed.TOPIC, "b_es_retry", 0, lambda s: s.update(failure_code=5)),
        (P.PayoutStarted.TOPIC, "b_es_reversed", 0,
         lambda s: s.update(event_service_id="b_es_lost")),  # not its payout's
        (P.ReversalSucceeded.TOPIC, "es_rev", 0, lambda s: s.update(class_version=1.0)),
        # less than the row's amount reversed already (2000): the row keeps the most
        (P.ReversalSucceeded.TOPIC, "es_paid", 0, lambda s: s.update(amount_reversed=1500)),
    ]  # fmt: skip
    for topic, service, nth, change in edits:
        raw.edit(stored(ledger, topic, service, nth), change)
    nid = stored(ledger, P.PayoutStarted.TOPIC, "b_es_inflight")
    raw.set_state(nid, b"  " + raw.row(nid).state + b"\n")  # JSON with white space around it


def raw_rows(store_url: str, table: str) -> list[tuple[Any, ...]]:
    """A payouts table's rows exactly as the database holds them, by payout id."""
    with sqlite_or_postgres(store_url) as (cursor, default):
        name = table if "." not in default else f"{default.split('.')[0]}.{table}"
        cursor.execute(f"SELECT * FROM {name} ORDER BY payout_id")
        return [tuple(r) for r in cursor.fetchall()]


def rebuilt_and_folded_one_by_one(ledger: PayoutLedger) -> tuple[Any, Any]:
    """A fast rebuild of the payouts table, and the log applied one event at a time to
    another table: (their runs, their rows)."""
    rebuilt = run_projection(ledger, rebuild=True)
    one_by_one = run_projection(ledger, view=open_payouts_view(ledger, table="by_event"),
                                batch_size=1)  # fmt: skip
    url = ledger.settings.store_url
    return (rebuilt, one_by_one), (
        raw_rows(url, "payout_ledger_payouts"),
        raw_rows(url, "by_event"),
    )


def rebuilt_as_one_by_one(ledger: PayoutLedger, fast_folds: list[int | None]) -> tuple[Any, Any]:
    """A fast rebuild (that ran, and folded what it counts), with the same rows and the
    same events folded and left out as the log applied one event at a time: (its run,
    its rows)."""
    (rebuilt, one_by_one), (rows, expected) = rebuilt_and_folded_one_by_one(ledger)
    assert fast_folds == [rebuilt.events]
    assert (rebuilt.events, rebuilt.skipped) == (one_by_one.events, one_by_one.skipped)
    assert rows == expected
    assert rebuilt.tracking_id == one_by_one.tracking_id
    return rebuilt, rows


def test_the_fast_rebuild_makes_the_table_folding_event_by_event_makes(
    history: PayoutLedger,
    gateway: InMemoryTransferGateway,
    raw: RawStore,
    sizes: str,
    fast_folds: list[int | None],
) -> None:
    """Every kind of payout event, and stored events the fast decoding does not take
    (an old class version, escapes, transcoded values in fields the table does not hold,
    white space, an undecodable state, a wrong type, a service id not its payout's):
    the same rows and values, the same events left out, the same tracking record."""
    with_late_events(history, gateway)
    with_odd_events(history, raw)
    kinds = {n.topic for n in history_rows(history)}
    assert kinds == set(PAYOUT_TOPICS)

    rebuilt, rows = rebuilt_as_one_by_one(history, fast_folds)

    assert rebuilt.skipped == 4
    payouts = {n.originator_id for n in history_rows(history)}
    assert len(rows) == len(payouts) - 1  # b_es_reversed's claim is left out
    assert rebuilt.tracking_id == max(r.id for r in history_rows(history))


def with_states_typed_otherwise(ledger: PayoutLedger, raw: RawStore) -> None:
    """Stored states whose every key the event class declares, but whose values are not
    all of the declared types, or are twice: what the mapper makes of each decides."""

    def twice(nid: int, key: str, value: bytes) -> None:  # the mapper keeps the last
        state = raw.row(nid).state
        raw.set_state(nid, state[:-1] + b',"' + key.encode() + b'":' + value + b"}")

    edits: list[tuple[str, str, Any]] = [
        # a time the table does not hold that is no time: undecodable, left out
        (P.PayoutStarted.TOPIC, "b_es_lost",
         lambda s: s["started_at"].update(_data_="not a time")),
        # a field the table does not hold, of another type: folded
        (P.PayoutStarted.TOPIC, "b_es_failed", lambda s: s.update(idempotency_key=5)),
        (P.PayoutStarted.TOPIC, "es_inflight", lambda s: s.update(started_at=None)),
        # a time with a key more (not revived), or of another transcoded type: left out
        (P.TransferSucceeded.TOPIC, "b_es_paid", lambda s: s["timestamp"].update(x=1)),
        (P.TransferFailed.TOPIC, "es_retry",
         lambda s: s.update(timestamp={"_type_": "uuid_hex", "_data_": "0" * 32})),
        # a folded integer written as true, a NUL in folded text (escaped): left out
        (P.PayoutStarted.TOPIC, "b_es_retry", lambda s: s.update(attempt=True)),
        (P.TransferSucceeded.TOPIC, "es_paid", lambda s: s.update(transfer_id="tr_\x00")),
    ]  # fmt: skip
    for topic, service, change in edits:
        raw.edit(stored(ledger, topic, service), change)
    twice(stored(ledger, P.PayoutStarted.TOPIC, "es_lost"), "amount", b"3301")
    twice(stored(ledger, P.TransferSucceeded.TOPIC, "es_lost"), "transfer_id", b'"tr_last"')
    twice(stored(ledger, P.TransferReversed.TOPIC, "es_reversed"), "amount_reversed", b"true")


def test_the_fast_rebuild_reads_each_value_as_the_mapper_does(
    history: PayoutLedger,
    raw: RawStore,
    sizes: str,
    fast_folds: list[int | None],
) -> None:
    """Declared keys with values of other types, or given twice: the same rows and the
    same events left out as folding the log event by event."""
    with_states_typed_otherwise(history, raw)

    rebuilt, rows = rebuilt_as_one_by_one(history, fast_folds)

    assert rebuilt.skipped == 6
    by_service = {row[1]: row for row in rows}
    assert by_service["es_lost"][5] == 3301  # the amount given last
    assert by_service["es_lost"][9] == "tr_last"


TIMESTAMP_SPELLINGS = [
    "2026-03-01T10:00:00.123456+00:00",  # as the ledger writes them
    "2026-03-01T10:00:00+00:00",
    "0999-12-31T23:59:59.000001+00:00",
    "2026-03-01T10:00:00.123456Z",
    "2026-03-01 10:00:00.123456+00:00",
    "2026-03-01T10:00:00,123456+00:00",
    "2026-W09-7T10:00:00.500000+00:00",
    "2026-03-01T10:00:00.000000+00:00",
    "2026-03-01T10:00:00.123+00:00",
    "20260301T100000.123456+0000",
    "2026-03-01T12:00:00.123456+02:00",
    "2026-03-01T10:00:00.123456-00:30",
    "2026-03-01T10:00:00.123456",
    "2026-03-01T15:30:15.123456+05:30:15",
    "2026-03-01T10:00:00.123456-00:00:00.000001",
]
"""Timestamps ``datetime.fromisoformat`` reads: the ledger's own spelling, and others
an edited log may hold (a zone letter, a space, a comma, a week date, zero or short
fractions, the basic format, other offsets, offsets of seconds and microseconds,
none)."""


def test_the_fast_rebuild_writes_each_timestamp_as_folding_event_by_event_writes(
    history: PayoutLedger,
    gateway: InMemoryTransferGateway,
    raw: RawStore,
    sizes: str,
    fast_folds: list[int | None],
) -> None:
    """Each payout event's timestamp (``updated_at``; ``released_at`` too, for a
    Released) spelt each way in turn: the same rows, value for value, as the table
    the log applied one event at a time makes."""
    with_late_events(history, gateway)
    events = history_rows(history)
    for i, n in enumerate(events):
        spelling = TIMESTAMP_SPELLINGS[i % len(TIMESTAMP_SPELLINGS)]
        raw.edit(n.id, lambda s, t=spelling: s["timestamp"].update(_data_=t))
    assert len(events) > 2 * len(TIMESTAMP_SPELLINGS)

    rebuilt, _ = rebuilt_as_one_by_one(history, fast_folds)

    assert (rebuilt.events, rebuilt.skipped) == (len(events), 0)


def test_the_fast_rebuild_reads_an_encrypted_log(
    make_ledger: Any, gateway: InMemoryTransferGateway, fast_folds: list[int | None]
) -> None:
    from eventsourcing.cryptography import AESCipher
    from pydantic import SecretStr

    ledger = make_ledger(cipher_key=SecretStr(AESCipher.create_key(32)))
    run_scenario(ledger, gateway)
    run_reversal_scenario(ledger, gateway)

    (rebuilt, one_by_one), (rows, expected) = rebuilt_and_folded_one_by_one(ledger)

    assert fast_folds == [rebuilt.events] and rebuilt.events == one_by_one.events
    assert rows == expected and len(rows) == len(expected_rows(ledger))


def test_a_payout_started_again_in_an_edited_log_is_refused_then_folded_in_batches(
    history: PayoutLedger,
    raw: RawStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A payout's first claim (version 1) moved to the end of the log, after its second:
    the fast rebuild takes it for a new payout's, the database refuses the new row, and
    the log is folded in batches."""
    for name, value in TINY.items():
        monkeypatch.setattr(rebuild_module, name, value)
    first = raw.row(stored(history, P.PayoutStarted.TOPIC, "es_retry", 0))
    raw.delete(first.notification_id)
    raw.insert((history.recorder.max_notification_id() or 0) + 1, first)

    with caplog.at_level(logging.WARNING, logger="payout_ledger.adapters.projection"):
        (rebuilt, one_by_one), (rows, expected) = rebuilt_and_folded_one_by_one(history)

    assert any("refused a row of the rebuild" in r.getMessage() for r in caplog.records)
    assert (rebuilt.events, rebuilt.skipped) == (one_by_one.events, one_by_one.skipped)
    assert rows == expected


def test_a_service_id_given_twice_is_refused_by_the_rebuilt_table_then_folded_in_batches(
    history: PayoutLedger,
    raw: RawStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past the checks (which leave out a service id that is not its payout's), a
    second payout started with an earlier one's service id: the table refuses the
    rebuild's second row (by the service id's uniqueness, not the payout id's), and
    the log is folded in batches, as folding it event by event does."""
    for module in (rebuild_module, runner_module):
        monkeypatch.setattr(module, "unprojectable", lambda event: None)
    raw.edit(stored(history, P.PayoutStarted.TOPIC, "es_inflight"),
             lambda state: state.__setitem__("event_service_id", "es_paid"))  # fmt: skip

    with caplog.at_level(logging.WARNING, logger="payout_ledger.adapters.projection"):
        (rebuilt, one_by_one), (rows, expected) = rebuilt_and_folded_one_by_one(history)

    assert any("refused a row of the rebuild" in r.getMessage() for r in caplog.records)
    assert (rebuilt.events, rebuilt.skipped) == (one_by_one.events, one_by_one.skipped)
    assert one_by_one.skipped >= 1
    assert "es_inflight" not in [r[1] for r in rows]
    assert rows == expected


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("originator_version", "two"),
        ("state", "text, not bytes"),
        ("topic", 7),
        ("originator_id", "upper"),
        ("originator_id", "not-a-uuid"),
        ("originator_id", 42),
    ],
)
def test_the_fast_rebuild_reads_sqlite_columns_of_impossible_types_as_batches_do(
    sqlite_url: str,
    providers: InMemoryProviderDirectory,
    gateway: InMemoryTransferGateway,
    fast_folds: list[int | None],
    column: str,
    value: object,
) -> None:
    """SQLite lets a column hold any type: the fast rebuild reads such a row as applying
    batches reads it (a run that fails there fails here too, with the same error)."""
    with PayoutLedger(
        settings=LedgerSettings(store_url=sqlite_url), providers=providers, gateway=gateway
    ) as ledger:
        run_scenario(ledger, gateway)
        run_reversal_scenario(ledger, gateway)
        nid = stored(ledger, P.TransferSucceeded.TOPIC, "es_reversed")
        if value == "upper":
            value = ledger.payout_id("es_reversed").hex.upper()
        with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
            conn.execute(f"UPDATE stored_events SET {column} = ? WHERE rowid = ?", (value, nid))

        def outcome(run: Any, table: str) -> tuple[Any, ...]:
            try:
                done = run()
            except Exception as exc:
                return ("failed", type(exc))
            return (done.events, done.skipped, raw_rows(sqlite_url, table))

        rebuilt = outcome(lambda: run_projection(ledger, rebuild=True), "payout_ledger_payouts")
        one_by_one = outcome(
            lambda: run_projection(ledger, view=open_payouts_view(ledger, table="by_event"),
                                   batch_size=1),
            "by_event",
        )  # fmt: skip

    assert rebuilt == one_by_one
    assert len(fast_folds) == 1


def _row(released_at: Any, updated_at: Any, text: str = "prov") -> tuple[Any, ...]:
    return ("7d9c6f3e-0000-5000-8000-000000000001", "es_1", text, "user", None, 1500, "eur",
            "released", 1, "tr_1", 0, None, released_at, updated_at, 3, 42, 0, None)  # fmt: skip


def test_rows_go_to_the_database_as_json_only_when_json_carries_them_exactly() -> None:
    """A rebuild's writers hand a batch to the database as one JSON document: each value
    as it is, each time as ``isoformat`` writes it but a zero offset as ``Z``; a batch
    holding what JSON would change (an offset of seconds, time text holding a ``Z``, a
    time of another type, a NUL, a lone surrogate) is not made a document."""
    utc = datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)
    east = datetime(2026, 3, 1, 15, 30, 0, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    naive = datetime(999, 12, 31, 23, 59, 59, 1)
    document = json_rows([_row(None, utc), _row(east, naive), _row(None, east.isoformat())])
    assert document is not None
    assert json.loads(document) == [
        [*_row(None, "2026-03-01T10:00:00.123456Z")[:12], None, "2026-03-01T10:00:00.123456Z",
         3, 42, 0, None],
        [*_row(None, None)[:12], east.isoformat(), naive.isoformat(), 3, 42, 0, None],
        [*_row(None, None)[:12], None, east.isoformat(), 3, 42, 0, None],
    ]  # fmt: skip
    seconds = timezone(timedelta(hours=5, minutes=30, seconds=15))
    for refused in (
        _row(None, datetime(2026, 3, 1, tzinfo=seconds)),
        _row(datetime(2026, 3, 1, tzinfo=timezone(timedelta(microseconds=1))), utc),
        _row(None, "2026-03-01T10:00:00Z"),
        _row(None, "2026-03-01TZ10:00:00+00:00"),
        _row(None, 1772359200),
        _row(None, utc, text="prov\x00"),
        _row(None, utc, text="prov\ud800"),
    ):
        assert json_rows([_row(None, utc), refused]) is None

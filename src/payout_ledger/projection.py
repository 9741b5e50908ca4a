"""The payouts read model: one row per event service, for hosts to query with SQL.

A [`PayoutsProjection`][payout_ledger.projection.PayoutsProjection] (an
``eventsourcing.projection.Projection``) folds payout events into rows of a
table in the events' own database (``payout_ledger_payouts`` by default).
Its view is an eventsourcing tracking recorder
([`SQLitePayoutsView`][payout_ledger.projection.SQLitePayoutsView],
[`PostgresPayoutsView`][payout_ledger.projection.PostgresPayoutsView]): the rows
of a batch and the tracking record (the last notification id applied) are
written in one transaction, which first checks that the tracking record is
still where the batch started. So each event is applied exactly once, a crash
loses only the uncommitted batch, and the next run resumes after the last
committed one.

[`run_projection`][payout_ledger.projection.run_projection] reads the log with
``select_notifications`` (SQLite has no subscriptions, so it polls, and so does
PostgreSQL, for one code path). eventsourcing's ``ProjectionRunner`` is not
used: it constructs the application from an environment alone (the ledger
needs its settings and ports), subscribes (SQLite cannot) and commits one event
per transaction (a rebuild of a million events would take hours on SQLite).

[`PayoutLedger`][payout_ledger.PayoutLedger] works without the read model;
run ``payout-ledger project`` (or ``run_projection``) to keep it. The table
holds plain text columns, including the destination account, even when the
events are encrypted at rest.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, cast
from uuid import UUID

from eventsourcing.persistence import (
    IntegrityError,
    InternalError,
    OperationalError,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.projection import Projection
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from psycopg.sql import SQL, Composed, Identifier

from payout_ledger.errors import ConfigurationError
from payout_ledger.payout import PayoutAggregate, PayoutStatus

__all__ = [
    "PAYOUT_TOPICS",
    "PayoutRow",
    "PayoutsProjection",
    "PayoutsView",
    "PostgresPayoutsView",
    "ProjectionConflictError",
    "ProjectionRun",
    "SQLitePayoutsView",
    "open_payouts_view",
    "run_projection",
]

logger = logging.getLogger("payout_ledger.projection")

PAYOUT_TOPICS = (
    PayoutAggregate.PayoutStarted.TOPIC,
    PayoutAggregate.TransferFailed.TOPIC,
    PayoutAggregate.TransferSucceeded.TOPIC,
    PayoutAggregate.Released.TOPIC,
    PayoutAggregate.TransferReversed.TOPIC,
)
"""The events the read model is made of."""


@dataclass(frozen=True)
class PayoutRow:
    """One row of the payouts table: an event service's payout as of its last event."""

    payout_id: str
    event_service_id: str
    provider_id: str
    payee_user_id: str
    destination_account: str | None
    amount: int
    currency: str
    status: str
    """A [`PayoutStatus`][payout_ledger.PayoutStatus] value."""
    attempt: int
    transfer_id: str | None
    amount_reversed: int
    failure_code: str | None
    released_at: datetime | None
    updated_at: datetime
    """The time of the payout's last event."""
    version: int
    """The payout aggregate's version after its last event."""
    notification_id: int
    """The notification id of the payout's last event."""


COLUMNS = tuple(f.name for f in fields(PayoutRow))


class ProjectionConflictError(Exception):
    """Another runner moved the tracking record while this batch was being applied."""


class PayoutsView(TrackingRecorder, ABC):
    """The payouts table and its tracking record, in one database."""

    table: str

    @abstractmethod
    def apply(
        self,
        application_name: str,
        after: int | None,
        through: int,
        payout_ids: Iterable[str],
        update: Callable[[dict[str, dict[str, Any]]], Mapping[str, dict[str, Any]]],
    ) -> None:
        """In one transaction: check the tracking record is ``after``, load the rows
        of ``payout_ids``, let ``update`` change them, write them and track ``through``."""

    @abstractmethod
    def rows(self) -> list[PayoutRow]:
        """Every row, ordered by event service id."""

    @abstractmethod
    def get(self, event_service_id: str) -> PayoutRow | None:
        """One event service's row."""

    @abstractmethod
    def reset(self, application_name: str) -> None:
        """Empty the table and forget the tracking record (for a rebuild)."""

    @abstractmethod
    def count(self) -> int:
        """How many rows (payouts) the table has."""


_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


def _checked_name(table: str) -> str:
    # SQLite statements are built with the table name: only a plain identifier is taken.
    if not _TABLE_NAME.match(table):
        raise ConfigurationError(f"not a plain table name: {table!r}")
    return table


def _row(values: Mapping[str, Any]) -> PayoutRow:
    data = dict(values)
    for name in ("released_at", "updated_at"):
        if isinstance(data[name], str):
            data[name] = datetime.fromisoformat(data[name])
    data["payout_id"] = str(data["payout_id"])
    return PayoutRow(**data)


class SQLitePayoutsView(SQLiteTrackingRecorder, PayoutsView):
    """The payouts table in the ledger's SQLite file (timestamps as ISO 8601 text, UTC)."""

    def __init__(self, datastore: SQLiteDatastore, *, table: str) -> None:
        self.table = _checked_name(table)
        self.tracking_table = f"{table}_tracking"
        super().__init__(datastore)
        tt = self.tracking_table
        self.insert_tracking_statement = (
            f"INSERT INTO {tt} VALUES (:application_name, :notification_id) "  # noqa: S608
            "ON CONFLICT (application_name) DO UPDATE "
            "SET notification_id = :notification_id "
            f"WHERE {tt}.notification_id < :notification_id "
            "RETURNING notification_id"
        )
        self.select_max_tracking_id_statement = (
            f"SELECT MAX(notification_id) FROM {tt} WHERE application_name=?"  # noqa: S608
        )
        placeholders = ", ".join(f":{c}" for c in COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "payout_id")
        self._upsert = (
            f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({placeholders}) "  # noqa: S608
            f"ON CONFLICT (payout_id) DO UPDATE SET {updates}"
        )

    def construct_create_table_statements(self) -> list[str]:
        # Not the base class's: it names its tracking table "tracking".
        t, tt = self.table, self.tracking_table
        return [
            f"CREATE TABLE IF NOT EXISTS {tt} (application_name TEXT, notification_id INTEGER, "
            "PRIMARY KEY (application_name)) WITHOUT ROWID",
            f"CREATE TABLE IF NOT EXISTS {t} ("
            "payout_id TEXT PRIMARY KEY, "
            "event_service_id TEXT NOT NULL UNIQUE, "
            "provider_id TEXT NOT NULL, "
            "payee_user_id TEXT NOT NULL, "
            "destination_account TEXT, "
            "amount INTEGER NOT NULL, "
            "currency TEXT NOT NULL, "
            "status TEXT NOT NULL, "
            "attempt INTEGER NOT NULL, "
            "transfer_id TEXT, "
            "amount_reversed INTEGER NOT NULL, "
            "failure_code TEXT, "
            "released_at TEXT, "
            "updated_at TEXT NOT NULL, "
            "version INTEGER NOT NULL, "
            "notification_id INTEGER NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {t}_status_idx ON {t} (status, updated_at)",
            f"CREATE INDEX IF NOT EXISTS {t}_provider_idx ON {t} (provider_id)",
        ]

    def apply(
        self,
        application_name: str,
        after: int | None,
        through: int,
        payout_ids: Iterable[str],
        update: Callable[[dict[str, dict[str, Any]]], Mapping[str, dict[str, Any]]],
    ) -> None:
        with self.datastore.get_connection(commit=True) as conn:
            cursor = conn.cursor()
            cursor.execute("BEGIN IMMEDIATE")  # the write lock first: no stale reads
            try:
                cursor.execute(self.select_max_tracking_id_statement, (application_name,))
                current = cursor.fetchone()[0]
                if current != after:
                    raise ProjectionConflictError(f"tracking is at {current}, not {after}")
                loaded: dict[str, dict[str, Any]] = {}
                ids = list(payout_ids)
                for i in range(0, len(ids), 500):
                    chunk = ids[i : i + 500]
                    cursor.execute(
                        f"SELECT * FROM {self.table} WHERE payout_id IN "  # noqa: S608
                        f"({', '.join('?' * len(chunk))})",
                        chunk,
                    )
                    loaded.update({r["payout_id"]: dict(r) for r in cursor.fetchall()})
                changed = update(loaded)
                cursor.executemany(self._upsert, [_sqlite_values(row) for row in changed.values()])
                self._insert_tracking(cursor, Tracking(application_name, through))
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def rows(self) -> list[PayoutRow]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT * FROM {self.table} ORDER BY event_service_id")  # noqa: S608
            return [_row(dict(r)) for r in c.fetchall()]

    def get(self, event_service_id: str) -> PayoutRow | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT * FROM {self.table} WHERE event_service_id = ?",  # noqa: S608
                (event_service_id,),
            )
            row = c.fetchone()
            return None if row is None else _row(dict(row))

    def count(self) -> int:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT COUNT(*) FROM {self.table}")  # noqa: S608
            return int(c.fetchone()[0])

    def reset(self, application_name: str) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(f"DELETE FROM {self.table}")  # noqa: S608
            c.execute(
                f"DELETE FROM {self.tracking_table} WHERE application_name = ?",  # noqa: S608
                (application_name,),
            )


def _sqlite_values(row: Mapping[str, Any]) -> dict[str, Any]:
    values = {c: row.get(c) for c in COLUMNS}
    for name in ("released_at", "updated_at"):
        moment = values[name]
        if isinstance(moment, datetime):
            values[name] = moment.isoformat()
    return values


class PostgresPayoutsView(PostgresTrackingRecorder, PayoutsView):
    """The payouts table in the ledger's PostgreSQL schema (timestamps as timestamptz)."""

    def __init__(self, datastore: PostgresDatastore, *, table: str) -> None:
        table = _checked_name(table)
        super().__init__(datastore, tracking_table_name=f"{table}_tracking")
        self.table = table
        schema, t = Identifier(self.datastore.schema), Identifier(table)
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{t} ("
                "payout_id uuid PRIMARY KEY, "
                "event_service_id text NOT NULL UNIQUE, "
                "provider_id text NOT NULL, "
                "payee_user_id text NOT NULL, "
                "destination_account text, "
                "amount bigint NOT NULL, "
                "currency text NOT NULL, "
                "status text NOT NULL, "
                "attempt integer NOT NULL, "
                "transfer_id text, "
                "amount_reversed bigint NOT NULL, "
                "failure_code text, "
                "released_at timestamptz, "
                "updated_at timestamptz NOT NULL, "
                "version integer NOT NULL, "
                "notification_id bigint NOT NULL)"
            ).format(schema=schema, t=t)
        )
        self.sql_create_statements.append(
            SQL("CREATE INDEX IF NOT EXISTS {i} ON {schema}.{t} (status, updated_at)").format(
                i=Identifier(f"{table}_status_idx"), schema=schema, t=t
            )
        )
        self.sql_create_statements.append(
            SQL("CREATE INDEX IF NOT EXISTS {i} ON {schema}.{t} (provider_id)").format(
                i=Identifier(f"{table}_provider_idx"), schema=schema, t=t
            )
        )
        # Runners of this view take turns: the lock is held until the batch commits, so
        # the tracking record read next is the one the batch will move (even the first).
        self._lock_tracking = SQL("LOCK TABLE {schema}.{tt} IN SHARE ROW EXCLUSIVE MODE").format(
            schema=schema, tt=Identifier(self.tracking_table_name)
        )
        self._select_tracking = SQL(
            "SELECT notification_id FROM {schema}.{tt} WHERE application_name = %s"
        ).format(schema=schema, tt=Identifier(self.tracking_table_name))
        self._select_ids = SQL("SELECT * FROM {schema}.{t} WHERE payout_id = ANY(%s)").format(
            schema=schema, t=t
        )
        self._select_all = SQL("SELECT * FROM {schema}.{t} ORDER BY event_service_id").format(
            schema=schema, t=t
        )
        self._select_one = SQL("SELECT * FROM {schema}.{t} WHERE event_service_id = %s").format(
            schema=schema, t=t
        )
        self._upsert: Composed = SQL(
            "INSERT INTO {schema}.{t} ({cols}) VALUES ({vals}) "
            "ON CONFLICT (payout_id) DO UPDATE SET {updates}"
        ).format(
            schema=schema,
            t=t,
            cols=SQL(", ").join(Identifier(c) for c in COLUMNS),
            vals=SQL(", ").join(SQL("%({})s").format(SQL(c)) for c in COLUMNS),
            updates=SQL(", ").join(
                SQL("{c} = EXCLUDED.{c}").format(c=Identifier(c))
                for c in COLUMNS
                if c != "payout_id"
            ),
        )
        self._delete_rows = SQL("DELETE FROM {schema}.{t}").format(schema=schema, t=t)
        self._count = SQL("SELECT COUNT(*) AS count FROM {schema}.{t}").format(schema=schema, t=t)
        self._delete_tracking = SQL("DELETE FROM {schema}.{tt} WHERE application_name = %s").format(
            schema=schema, tt=Identifier(self.tracking_table_name)
        )

    def apply(
        self,
        application_name: str,
        after: int | None,
        through: int,
        payout_ids: Iterable[str],
        update: Callable[[dict[str, dict[str, Any]]], Mapping[str, dict[str, Any]]],
    ) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(self._lock_tracking)
            curs.execute(self._select_tracking, (application_name,))
            found = curs.fetchone()
            current = None if found is None else found["notification_id"]
            if current != after:
                raise ProjectionConflictError(f"tracking is at {current}, not {after}")
            curs.execute(self._select_ids, ([UUID(i) for i in payout_ids],))
            loaded = {str(r["payout_id"]): dict(r) for r in curs.fetchall()}
            changed = update(loaded)
            curs.executemany(
                self._upsert,
                [{c: row.get(c) for c in COLUMNS} for row in changed.values()],
            )
            self._insert_tracking(curs, Tracking(application_name, through))

    def rows(self) -> list[PayoutRow]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self._select_all)
            return [_row(r) for r in curs.fetchall()]

    def get(self, event_service_id: str) -> PayoutRow | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self._select_one, (event_service_id,))
            row = curs.fetchone()
            return None if row is None else _row(row)

    def count(self) -> int:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self._count)
            found = curs.fetchone()
            assert found is not None
            return int(found["count"])

    def reset(self, application_name: str) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(self._delete_rows)
            curs.execute(self._delete_tracking, (application_name,))


class PayoutsProjection(Projection[PayoutsView]):
    """Folds payout events into payouts-table rows; :meth:`fold` is the whole rule."""

    name = "payout_ledger_payouts"
    topics = PAYOUT_TOPICS

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """One event, tracked (eventsourcing's interface); runs use :meth:`process_batch`."""
        previous = self.view.max_tracking_id(tracking.application_name)
        self.process_batch(
            tracking.application_name, previous, [(domain_event, tracking.notification_id)]
        )

    def process_batch(
        self,
        application_name: str,
        after: int | None,
        batch: Sequence[tuple[Any, int]],
    ) -> None:
        """Apply events (with their notification ids) in one transaction, tracked."""
        if not batch:
            return
        payout_ids = {str(event.originator_id) for event, _ in batch}

        def update(rows: dict[str, dict[str, Any]]) -> Mapping[str, dict[str, Any]]:
            changed: dict[str, dict[str, Any]] = {}
            for event, notification_id in batch:
                key = str(event.originator_id)
                row = changed.get(key) or rows.get(key)
                folded = self.fold(row, event, notification_id)
                if folded is not None:
                    changed[key] = folded
            return changed

        self.view.apply(application_name, after, batch[-1][1], payout_ids, update)

    def fold(
        self, row: dict[str, Any] | None, event: Any, notification_id: int
    ) -> dict[str, Any] | None:
        """The row after ``event`` (None: nothing to write)."""
        if isinstance(event, PayoutAggregate.PayoutStarted):
            row = {
                **(row or {"transfer_id": None, "amount_reversed": 0, "released_at": None}),
                "payout_id": str(event.originator_id),
                "event_service_id": event.event_service_id,
                "provider_id": event.provider_id,
                "payee_user_id": event.payee_user_id,
                "destination_account": event.destination_account,
                "amount": event.amount,
                "currency": event.currency,
                "attempt": event.attempt,
                "status": PayoutStatus.IN_FLIGHT.value,
                "failure_code": None,
            }
        elif row is None:
            logger.warning(
                "%s at notification %d for payout %s without PayoutStarted; not projected",
                type(event).__name__,
                notification_id,
                event.originator_id,
            )
            return None
        elif isinstance(event, PayoutAggregate.TransferFailed):
            row = {**row, "status": PayoutStatus.FAILED.value, "failure_code": event.failure_code}
        elif isinstance(event, PayoutAggregate.TransferSucceeded):
            row = {
                **row,
                "status": PayoutStatus.TRANSFERRED.value,
                "transfer_id": event.transfer_id,
            }
        elif isinstance(event, PayoutAggregate.Released):
            row = {**row, "status": PayoutStatus.RELEASED.value, "released_at": event.timestamp}
        elif isinstance(event, PayoutAggregate.TransferReversed):
            row = {**row, "amount_reversed": event.amount_reversed}
            if event.amount_reversed >= row["amount"]:
                row["status"] = PayoutStatus.REVERSED.value
        else:
            return None
        row["updated_at"] = event.timestamp
        row["version"] = event.originator_version
        row["notification_id"] = notification_id
        return row


def open_payouts_view(ledger: Any, *, table: str | None = None) -> PayoutsView:
    """The payouts view on the ledger's own database (tables created if missing)."""
    datastore = getattr(ledger.factory, "datastore", None)
    name = table or ledger.settings.read_model_table
    view: PayoutsView
    if isinstance(datastore, SQLiteDatastore):
        view = SQLitePayoutsView(datastore, table=name)
    elif isinstance(datastore, PostgresDatastore):
        view = PostgresPayoutsView(datastore, table=name)
    else:
        raise ConfigurationError("the read model needs an SQLite or PostgreSQL store")
    # Runners starting together race to create the tables and the tracking table's
    # migration row; every statement is IF NOT EXISTS, and a second try sees the row.
    for attempt in range(1, _DDL_ATTEMPTS + 1):
        try:
            view.create_table()
        except (IntegrityError, InternalError, OperationalError):
            if attempt == _DDL_ATTEMPTS:
                raise
            time.sleep(random.uniform(0.05, 0.2) * attempt)
        else:
            break
    return view


_DDL_ATTEMPTS = 6


@dataclass(frozen=True)
class ProjectionRun:
    """What one run applied."""

    events: int
    batches: int
    tracking_id: int | None
    """The last notification id applied (the tracking record)."""


def run_projection(
    ledger: Any,
    *,
    view: PayoutsView | None = None,
    projection_class: type[PayoutsProjection] = PayoutsProjection,
    rebuild: bool = False,
    follow: bool = False,
    poll_interval: float = 1.0,
    batch_size: int = 1000,
    stop: threading.Event | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> ProjectionRun:
    """Bring the payouts table up to date with the log (and keep it so with ``follow``).

    Each batch of up to ``batch_size`` payout events is one transaction with
    its tracking record. After a crash, running again resumes after the last
    committed batch. ``rebuild`` empties the table and its tracking first.
    ``on_batch(last notification id, events)`` is called after each commit.
    """
    view = view or open_payouts_view(ledger)
    projection = projection_class(view=view)
    app_name = cast(str, ledger.name)
    if rebuild:
        view.reset(app_name)
    events = batches = 0
    stopping = stop or threading.Event()
    while not stopping.is_set():
        after = view.max_tracking_id(app_name)
        page = ledger.recorder.select_notifications(
            (after or 0) + 1, batch_size, topics=projection.topics
        )
        if not page:
            if not follow:
                break
            stopping.wait(poll_interval)
            continue
        batch = [(ledger.mapper.to_domain_event(n), n.id) for n in page]
        try:
            projection.process_batch(app_name, after, batch)
        except (ProjectionConflictError, IntegrityError):
            logger.info("another runner applied these events first; reading on")
            continue
        events += len(batch)
        batches += 1
        if on_batch is not None:
            on_batch(page[-1].id, len(batch))
    return ProjectionRun(events=events, batches=batches, tracking_id=view.max_tracking_id(app_name))

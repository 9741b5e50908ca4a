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

**Events the table cannot hold.** The log may hold events no column can take:
damaged or crafted ones (undecodable, a field of the wrong type, an amount
beyond PostgreSQL's ``bigint`` or an attempt beyond its ``integer``, text with
NUL or a lone surrogate, a service id that is not its payout's). Each is logged
(WARNING, with its notification id and the reason), counted in
[`ProjectionRun.skipped`][payout_ledger.projection.ProjectionRun] and left out;
the tracking record moves past it and every other event is applied. A payout
whose ``PayoutStarted`` is left out has no row; a later event that is left out
leaves its payout's row as it was. A write the database refuses for its data
is retried one event per transaction, so only the refused event is left out.
``payout-ledger verify`` and ``audit`` name such events.

**Rebuilds.** ``run_projection(..., rebuild=True)`` folds the whole log into a
new table (``<table>_rb_<6 hex digits>``, with its own tracking table) and
replaces the old table with it in one transaction once it is complete. Until
then, and if the rebuild fails, readers see the old rows; the new table is
dropped. Run one rebuild at a time: a rebuild that completes drops every other
rebuild's table (a crashed one's too), and a rebuild whose table was dropped
fails without touching the old rows.
"""

from __future__ import annotations

import logging
import random
import re
import secrets
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, cast
from uuid import UUID

import psycopg
from eventsourcing.persistence import (
    DataError,
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

from payout_ledger.audit.typecheck import type_check
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

    @abstractmethod
    def staging(self) -> PayoutsView:
        """A new, empty view of the same kind for a rebuild (``<table>_rb_<hex>``,
        without secondary indexes), to be swapped in by
        [`replace_with`][payout_ledger.projection.PayoutsView.replace_with]."""

    @abstractmethod
    def replace_with(self, staging: PayoutsView, application_name: str) -> None:
        """In one transaction: replace this table by ``staging``'s (indexes recreated),
        take over its tracking record, and drop its tracking table and every other
        rebuild's leftover tables."""

    @abstractmethod
    def drop(self) -> None:
        """Drop this (staging) view's table and tracking table, if they exist."""

    def _leftovers(self, names: Iterable[str]) -> list[str]:
        """Of ``names``, the tables of this table's rebuilds (and their tracking tables)."""
        pattern = re.compile(rf"^{re.escape(self.table)}_rb_[0-9a-f]{{6}}(_tracking)?$")
        return sorted(n for n in names if pattern.match(n))


_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
_STAGING_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}_rb_[0-9a-f]{6}$")


def _checked_name(table: str) -> str:
    # SQLite statements are built with the table name: only a plain identifier is taken.
    if not (_TABLE_NAME.match(table) or _STAGING_NAME.match(table)):
        raise ConfigurationError(f"not a plain table name: {table!r}")
    return table


def _staging_name(table: str) -> str:
    return f"{table}_rb_{secrets.token_hex(3)}"


def _row(values: Mapping[str, Any]) -> PayoutRow:
    data = dict(values)
    for name in ("released_at", "updated_at"):
        if isinstance(data[name], str):
            data[name] = datetime.fromisoformat(data[name])
    data["payout_id"] = str(data["payout_id"])
    return PayoutRow(**data)


class SQLitePayoutsView(SQLiteTrackingRecorder, PayoutsView):
    """The payouts table in the ledger's SQLite file (timestamps as ISO 8601 text, UTC)."""

    def __init__(self, datastore: SQLiteDatastore, *, table: str, indexes: bool = True) -> None:
        self.table = _checked_name(table)
        self.tracking_table = f"{table}_tracking"
        self._indexes = indexes
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
        statements = [
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
        ]
        return statements + (self._index_statements(t) if self._indexes else [])

    @staticmethod
    def _index_statements(t: str) -> list[str]:
        return [
            f"CREATE INDEX IF NOT EXISTS {t}_status_idx ON {t} (status, updated_at)",
            f"CREATE INDEX IF NOT EXISTS {t}_provider_idx ON {t} (provider_id)",
        ]

    def staging(self) -> SQLitePayoutsView:
        view = SQLitePayoutsView(self.datastore, table=_staging_name(self.table), indexes=False)
        view.create_table()
        return view

    def replace_with(self, staging: PayoutsView, application_name: str) -> None:
        assert isinstance(staging, SQLitePayoutsView)
        t, tt, st = self.table, self.tracking_table, staging.table
        with self.datastore.get_connection(commit=True) as conn:
            cursor = conn.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                others = self._leftovers(r[0] for r in cursor.fetchall())
                cursor.execute(f"DROP TABLE IF EXISTS {t}")
                cursor.execute(f"ALTER TABLE {st} RENAME TO {t}")
                for statement in self._index_statements(t):
                    cursor.execute(statement)
                cursor.execute(
                    f"DELETE FROM {tt} WHERE application_name = ?",  # noqa: S608
                    (application_name,),
                )
                cursor.execute(
                    f"INSERT INTO {tt} SELECT application_name, MAX(notification_id) "  # noqa: S608
                    f"FROM {staging.tracking_table} WHERE application_name = ? "
                    "GROUP BY application_name",
                    (application_name,),
                )
                for name in others:
                    cursor.execute(f"DROP TABLE IF EXISTS {name}")
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def drop(self) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute(f"DROP TABLE IF EXISTS {self.table}")
            c.execute(f"DROP TABLE IF EXISTS {self.tracking_table}")

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

    def __init__(self, datastore: PostgresDatastore, *, table: str, indexes: bool = True) -> None:
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
        self._index_statements = [
            SQL("CREATE INDEX IF NOT EXISTS {i} ON {schema}.{t} (status, updated_at)").format(
                i=Identifier(f"{table}_status_idx"), schema=schema, t=t
            ),
            SQL("CREATE INDEX IF NOT EXISTS {i} ON {schema}.{t} (provider_id)").format(
                i=Identifier(f"{table}_provider_idx"), schema=schema, t=t
            ),
        ]
        if indexes:
            self.sql_create_statements.extend(self._index_statements)
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

    def staging(self) -> PostgresPayoutsView:
        view = PostgresPayoutsView(self.datastore, table=_staging_name(self.table), indexes=False)
        view.create_table()
        return view

    def replace_with(self, staging: PayoutsView, application_name: str) -> None:
        assert isinstance(staging, PostgresPayoutsView)
        schema = Identifier(self.datastore.schema)
        t, tt = Identifier(self.table), Identifier(self.tracking_table_name)
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(self._lock_tracking)  # between two batches of any runner
            curs.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s",
                (self.datastore.schema,),
            )
            others = self._leftovers(str(r["tablename"]) for r in curs.fetchall())
            curs.execute(SQL("DROP TABLE IF EXISTS {schema}.{t}").format(schema=schema, t=t))
            curs.execute(
                SQL("ALTER TABLE {schema}.{st} RENAME TO {t}").format(
                    schema=schema, st=Identifier(staging.table), t=t
                )
            )
            for statement in self._index_statements:
                curs.execute(statement)
            curs.execute(self._delete_tracking, (application_name,))
            curs.execute(
                SQL(
                    "INSERT INTO {schema}.{tt} (application_name, notification_id) "
                    "SELECT application_name, MAX(notification_id) FROM {schema}.{stt} "
                    "WHERE application_name = %s GROUP BY application_name"
                ).format(schema=schema, tt=tt, stt=Identifier(staging.tracking_table_name)),
                (application_name,),
            )
            for name in others:
                curs.execute(
                    SQL("DROP TABLE IF EXISTS {schema}.{n}").format(
                        schema=schema, n=Identifier(name)
                    )
                )

    def drop(self) -> None:
        schema = Identifier(self.datastore.schema)
        with self.datastore.transaction(commit=True) as curs:
            for name in (self.table, self.tracking_table_name):
                curs.execute(
                    SQL("DROP TABLE IF EXISTS {schema}.{n}").format(
                        schema=schema, n=Identifier(name)
                    )
                )


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
        *,
        through: int | None = None,
    ) -> None:
        """Apply events (with their notification ids) in one transaction, tracked
        ``through`` the given notification id (the batch's last by default; an
        empty batch only moves the tracking record, if ``through`` is given)."""
        through = batch[-1][1] if through is None and batch else through
        if through is None:
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

        self.view.apply(application_name, after, through, payout_ids, update)

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
    skipped: int = 0
    """Events the table cannot hold (undecodable, ill-typed, out of range...): each
    logged with its notification id and left out (see the module's notes)."""


INT4 = (-(2**31), 2**31 - 1)
"""PostgreSQL ``integer``: the ``attempt`` and ``version`` columns."""
INT8 = (-(2**63), 2**63 - 1)
"""PostgreSQL ``bigint`` (and SQLite ``INTEGER``): ``amount`` and ``amount_reversed``."""

_P = PayoutAggregate
_FOLDED: dict[type, tuple[str, ...]] = {
    _P.PayoutStarted: (
        "event_service_id",
        "provider_id",
        "payee_user_id",
        "destination_account",
        "amount",
        "currency",
        "attempt",
    ),
    _P.TransferFailed: ("failure_code",),
    _P.TransferSucceeded: ("transfer_id",),
    _P.Released: (),
    _P.TransferReversed: ("amount_reversed",),
}
"""The fields :meth:`PayoutsProjection.fold` writes to the table, per event class."""
_RANGES = {"amount": INT8, "amount_reversed": INT8, "attempt": INT4, "originator_version": INT4}

_WRITE_ERRORS: tuple[type[BaseException], ...] = (
    DataError,
    IntegrityError,
    psycopg.DataError,
    psycopg.IntegrityError,
    sqlite3.DataError,
    sqlite3.IntegrityError,
    OverflowError,
    UnicodeEncodeError,
)
"""What a database raises for a row it cannot hold (never for a lost connection)."""


def unprojectable(event: Any) -> str | None:
    """Why the payouts table cannot hold ``event`` (None: it can).

    Its folded fields, version and time must have their declared types, integers
    fit their columns (``integer`` or ``bigint``), text be valid Unicode without
    NUL, and a ``PayoutStarted``'s service id must be its payout's.
    """
    fields_ = _FOLDED.get(type(event))
    if fields_ is None:
        return None  # not an event the base fold writes
    names = (*fields_, "originator_version", "timestamp")
    state = vars(event)
    wrong = type_check(type(event), names)(state)
    if wrong is not None:
        return wrong
    for name in names:
        value = state[name]
        if isinstance(value, int) and name in _RANGES:
            low, high = _RANGES[name]
            if not low <= value <= high:
                return f"{name} is out of the column's range"
        elif isinstance(value, str) and ("\x00" in value or not _encodable(value)):
            return f"{name} is not text the table can hold (NUL or a lone surrogate)"
    if isinstance(event, _P.PayoutStarted) and (
        PayoutAggregate.create_id(event.event_service_id) != event.originator_id
    ):
        return "event_service_id is not the payout's"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unchanged(rows: dict[str, dict[str, Any]]) -> Mapping[str, dict[str, Any]]:
    return {}


class _TrackingMoved(Exception):  # noqa: N818 - a signal, not an error
    """Another runner moved the tracking record: read the log again."""


@dataclass
class _Tally:
    events: int = 0
    batches: int = 0
    skipped: int = 0


def _skip(notification: Any, reason: str) -> None:
    logger.warning(
        "notification %d (%s, payout %s) not projected: %s; run payout-ledger verify",
        notification.id,
        notification.topic,
        notification.originator_id,
        reason,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


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
    committed batch. ``rebuild`` folds the whole log into a new table and swaps
    it in, in one transaction, once it is complete: until then (and if the
    rebuild fails or is stopped) the old rows stay. An event the table cannot
    hold is logged, counted in ``skipped`` and left out, never the whole run.
    ``on_batch(last notification id, events)`` is called after each commit.
    """
    view = view or open_payouts_view(ledger)
    app_name = cast(str, ledger.name)
    stopping = stop or threading.Event()
    tally = _Tally()
    if rebuild:
        staging = view.staging()
        swapped = False
        try:
            _catch_up(ledger, staging, projection_class, app_name, batch_size, stopping,
                      on_batch, tally)  # fmt: skip
            if stopping.is_set():  # stopped before the end: the old rows stay
                return ProjectionRun(0, 0, view.max_tracking_id(app_name))
            view.replace_with(staging, app_name)
            swapped = True
        finally:
            if not swapped:
                _drop_quietly(staging)
    while not stopping.is_set():
        _catch_up(ledger, view, projection_class, app_name, batch_size, stopping, on_batch, tally)
        if not follow:
            break
        stopping.wait(poll_interval)
    return ProjectionRun(
        events=tally.events,
        batches=tally.batches,
        tracking_id=view.max_tracking_id(app_name),
        skipped=tally.skipped,
    )


def _drop_quietly(staging: PayoutsView) -> None:
    try:
        staging.drop()
    except Exception:  # the original error matters more; the next rebuild drops it
        logger.exception("the unfinished rebuild's table %s could not be dropped", staging.table)


def _catch_up(
    ledger: Any,
    view: PayoutsView,
    projection_class: type[PayoutsProjection],
    app_name: str,
    batch_size: int,
    stopping: threading.Event,
    on_batch: Callable[[int, int], None] | None,
    tally: _Tally,
) -> None:
    """Apply pages of the log to ``view`` until none is left (or ``stopping``)."""
    projection = projection_class(view=view)
    while not stopping.is_set():
        after = view.max_tracking_id(app_name)
        page = ledger.recorder.select_notifications(
            (after or 0) + 1, batch_size, topics=projection.topics
        )
        if not page:
            return
        batch, skipped = [], 0
        for notification in page:
            try:
                event = ledger.mapper.to_domain_event(notification)
            except Exception as exc:
                _skip(notification, f"undecodable ({_first_line(exc)})")
                skipped += 1
                continue
            reason = unprojectable(event)
            if reason is not None:
                _skip(notification, reason)
                skipped += 1
                continue
            batch.append((event, notification.id))
        through = page[-1].id
        try:
            try:
                projection.process_batch(app_name, after, batch, through=through)
                applied = len(batch)
            except ProjectionConflictError:
                raise _TrackingMoved from None
            except _WRITE_ERRORS:
                if view.max_tracking_id(app_name) != after:
                    raise _TrackingMoved from None
                applied, refused = _one_by_one(
                    projection, view, app_name, after, batch, through, page
                )
                skipped += refused
        except _TrackingMoved:
            logger.info("another runner applied these events first; reading on")
            continue
        tally.events += applied
        tally.skipped += skipped
        tally.batches += 1
        if on_batch is not None:
            on_batch(through, applied)


def _one_by_one(
    projection: PayoutsProjection,
    view: PayoutsView,
    app_name: str,
    after: int | None,
    batch: Sequence[tuple[Any, int]],
    through: int,
    page: Sequence[Any],
) -> tuple[int, int]:
    """The batch again, one event per transaction: only an event the database
    refuses is left out. Returns (applied, refused)."""
    notifications = {n.id: n for n in page}
    applied = refused = 0
    position = after
    for event, notification_id in batch:
        try:
            projection.process_batch(app_name, position, [(event, notification_id)])
            applied += 1
        except ProjectionConflictError:
            raise _TrackingMoved from None
        except _WRITE_ERRORS as exc:
            if view.max_tracking_id(app_name) != position:
                raise _TrackingMoved from None
            _skip(notifications[notification_id], f"refused by the table ({_first_line(exc)})")
            view.apply(app_name, position, notification_id, [], _unchanged)
            refused += 1
        position = notification_id
    if position != through:
        view.apply(app_name, position, through, [], _unchanged)
    return applied, refused

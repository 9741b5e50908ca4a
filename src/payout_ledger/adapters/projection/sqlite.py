"""The payouts view on SQLite: its tables (DDL), batches, queries and rebuild swap."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from eventsourcing.persistence import Tracking
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder

from payout_ledger.adapters.projection.view import (
    COLUMNS,
    PayoutRow,
    PayoutsView,
    ProjectionConflictError,
    checked_name,
    payout_row,
    staging_name,
)


class SQLitePayoutsView(SQLiteTrackingRecorder, PayoutsView):
    """The payouts table in the ledger's SQLite file (timestamps as ISO 8601 text, UTC)."""

    def __init__(self, datastore: SQLiteDatastore, *, table: str, indexes: bool = True) -> None:
        self.table = checked_name(table)
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
            "notification_id INTEGER NOT NULL, "
            "reversal_attempt INTEGER NOT NULL DEFAULT 0, "
            "reversal_status TEXT)",
        ]
        return statements + (self._index_statements(t) if self._indexes else [])

    @staticmethod
    def _index_statements(t: str) -> list[str]:
        return [
            f"CREATE INDEX IF NOT EXISTS {t}_status_idx ON {t} (status, updated_at)",
            f"CREATE INDEX IF NOT EXISTS {t}_provider_idx ON {t} (provider_id)",
        ]

    def staging(self) -> SQLitePayoutsView:
        view = SQLitePayoutsView(self.datastore, table=staging_name(self.table), indexes=False)
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

    def missing_columns(self) -> list[str]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"PRAGMA table_info({self.table})")
            present = {r[1] for r in c.fetchall()}
        return [name for name in COLUMNS if present and name not in present]

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
            return [payout_row(dict(r)) for r in c.fetchall()]

    def get(self, event_service_id: str) -> PayoutRow | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT * FROM {self.table} WHERE event_service_id = ?",  # noqa: S608
                (event_service_id,),
            )
            row = c.fetchone()
            return None if row is None else payout_row(dict(row))

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

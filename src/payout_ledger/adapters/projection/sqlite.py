"""The payouts view on SQLite: its tables (DDL), batches, queries and rebuild swap."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from itertools import chain
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from eventsourcing.sqlite import (
    SQLITE3_DEFAULT_LOCK_TIMEOUT,
    SQLiteDatastore,
    SQLiteTrackingRecorder,
)

from payout_ledger.adapters.projection.view import (
    COLUMNS,
    TIME_COLUMNS,
    PayoutRow,
    PayoutsView,
    ProjectionConflictError,
    Row,
    RowWriter,
    checked_name,
    json_rows,
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
            _table_statement(t),
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

    def row_writer(self) -> SQLiteRowWriter | None:
        if self.datastore.pool.is_sqlite_memory_mode:
            return None  # another connection would open another database
        return SQLiteRowWriter(self)

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


def _table_statement(table: str) -> str:
    """The payouts table's definition (a rebuild's scratch table is made the same)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ("
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
        "reversal_status TEXT)"
    )


_SCRATCH = "payouts_rebuild_scratch"
"""The schema name of a rebuild's scratch database on its own connection."""
_SCRATCH_CACHE_KIB = 16 * 1024
_ROWS_PER_STATEMENT = 1000
_RELEASED_AT, _UPDATED_AT = COLUMNS.index("released_at"), COLUMNS.index("updated_at")


class SQLiteRowWriter(RowWriter):
    """A rebuild's rows, written into a private scratch table, then copied whole.

    The rows go into a table made exactly like the payouts table, in an
    anonymous temporary database on a connection of the writer's own (SQLite
    deletes it when the connection closes, or the process dies). Nothing is
    journalled or synced there, and the ledger's database is not locked while
    the log is folded. :meth:`finish` copies the table into the staging table in
    one transaction with its tracking record (SQLite copies a table into an
    empty one of the same definition record by record, indexes included,
    without sorting or searching them: its "transfer optimization", far faster
    than inserting millions of rows with random payout ids), then swaps it in
    with :meth:`SQLitePayoutsView.replace_with`. The scratch database is in
    SQLite's temporary directory (``SQLITE_TMPDIR``) and as large as the table.

    A batch is written with INSERT statements of many rows each: SQLite runs a
    statement without holding Python's GIL, and the writer's thread would wait
    for the GIL after every row with one statement per row.
    """

    def __init__(self, view: SQLitePayoutsView) -> None:
        super().__init__()
        pool = view.datastore.pool
        self._view = view
        self._conn = sqlite3.connect(
            pool.db_name,
            uri=True,
            isolation_level=None,
            check_same_thread=False,  # the writer's thread writes, between the caller's calls
            timeout=pool.lock_timeout or SQLITE3_DEFAULT_LOCK_TIMEOUT,
        )
        try:
            self._conn.execute(f"ATTACH DATABASE '' AS {_SCRATCH}")
            for pragma in ("journal_mode = OFF", "synchronous = OFF",
                           f"cache_size = -{_SCRATCH_CACHE_KIB}"):  # fmt: skip
                self._conn.execute(f"PRAGMA {_SCRATCH}.{pragma}")
            self._rows = f"{_SCRATCH}.rebuilt_payouts"
            self._conn.execute(_table_statement(self._rows))
            variables = self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        except BaseException:
            self._conn.close()
            raise
        self._per_statement = max(1, min(_ROWS_PER_STATEMENT, variables // len(COLUMNS)))
        self._statements: dict[tuple[bool, int], str] = {}
        self._from_json = _has_json(self._conn)

    def _load(self, payout_ids: Sequence[str]) -> dict[str, Row]:
        found: dict[str, Row] = {}
        ids = [str(UUID(hex=i)) for i in payout_ids]
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            cursor = self._conn.execute(
                f"SELECT {', '.join(COLUMNS)} FROM {self._rows} "  # noqa: S608
                f"WHERE payout_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            for values in cursor.fetchall():
                found[UUID(values[0]).hex] = values
        return found

    def _write(
        self, application_name: str, new: Sequence[Row], changed: Sequence[Row], through: int
    ) -> None:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            for upsert, rows in ((False, new), (True, changed)):
                document = json_rows(rows) if rows and self._from_json else None
                if document is not None:
                    conn.execute(self._statement(upsert, 0), (document,))
                    continue
                for i in range(0, len(rows), self._per_statement):
                    chunk = rows[i : i + self._per_statement]
                    values = _sqlite_values_of(chunk)
                    conn.execute(self._statement(upsert, len(chunk)), values)
        except BaseException:
            conn.rollback()
            raise
        conn.execute("COMMIT")

    def _statement(self, upsert: bool, rows: int) -> str:
        """An INSERT of ``rows`` rows (an upsert on the payout id, if ``upsert``); of
        ``0``: of the rows of one ``json_rows`` document."""
        statement = self._statements.get((upsert, rows))
        if statement is None:
            marks = "(" + ", ".join("?" * len(COLUMNS)) + ")"
            values = (
                f"SELECT {_FROM_JSON} FROM json_each(?) WHERE 1"  # noqa: S608 - WHERE: see ON CONFLICT
                if rows == 0
                else f"VALUES {', '.join([marks] * rows)}"
            )
            statement = f"INSERT INTO {self._rows} {values}"
            if upsert:
                updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "payout_id")
                statement += f" ON CONFLICT (payout_id) DO UPDATE SET {updates}"
            self._statements[upsert, rows] = statement
        return statement

    def _finish(self, view: PayoutsView, application_name: str, through: int | None) -> None:
        staging = self._view
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"INSERT INTO main.{staging.table} SELECT * FROM {self._rows}")  # noqa: S608
            if through is not None:
                conn.execute(
                    f"INSERT INTO main.{staging.tracking_table} VALUES (?, ?)",  # noqa: S608
                    (application_name, through),
                )
        except BaseException:
            conn.rollback()
            raise
        conn.execute("COMMIT")
        # A transaction of its own: in the copy's, making the indexes is twice as slow.
        view.replace_with(staging, application_name)

    def _close(self) -> None:
        self._conn.close()


def _has_json(conn: sqlite3.Connection) -> bool:
    """Whether this SQLite has its JSON functions (built in since 3.38, an option before)."""
    try:
        conn.execute("SELECT json_extract(value, '$[0]') FROM json_each('[[1]]')").fetchall()
    except sqlite3.OperationalError:
        return False
    return True


def _json_value(i: int) -> str:
    """The value at ``i`` of a ``json_rows`` row as SQLite stores it: a time as
    ``datetime.isoformat`` writes it (``json_rows`` writes a zero offset ``Z``, and
    makes no document of time text that holds a ``Z``)."""
    value = f"json_extract(value, '$[{i}]')"
    return f"replace({value}, 'Z', '+00:00')" if i in TIME_COLUMNS else value


_FROM_JSON = ", ".join(_json_value(i) for i in range(len(COLUMNS)))


def _sqlite_values_of(rows: Sequence[Row]) -> list[Any]:
    """The rows' values, one after the other, as SQLite stores them (timestamps as
    ISO 8601 text); this runs on the writer's thread, holding the GIL, so it is lean."""
    values = list(chain.from_iterable(rows))
    width = len(COLUMNS)
    for column in (_RELEASED_AT, _UPDATED_AT):
        values[column::width] = [
            moment.isoformat() if isinstance(moment, datetime) else moment
            for moment in values[column::width]
        ]
    return values


def _sqlite_values(row: Mapping[str, Any]) -> dict[str, Any]:
    values = {c: row.get(c) for c in COLUMNS}
    for name in ("released_at", "updated_at"):
        moment = values[name]
        if isinstance(moment, datetime):
            values[name] = moment.isoformat()
    return values

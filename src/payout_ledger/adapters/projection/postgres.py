"""The payouts view on PostgreSQL: its tables (DDL), batches, queries and rebuild swap."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from psycopg.sql import SQL, Composed, Identifier

from payout_ledger.adapters.projection.view import (
    COLUMNS,
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


class PostgresPayoutsView(PostgresTrackingRecorder, PayoutsView):
    """The payouts table in the ledger's PostgreSQL schema (timestamps as timestamptz)."""

    def __init__(self, datastore: PostgresDatastore, *, table: str, indexes: bool = True) -> None:
        table = checked_name(table)
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
                "notification_id bigint NOT NULL, "
                "reversal_attempt integer NOT NULL DEFAULT 0, "
                "reversal_status text)"
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
            return [payout_row(r) for r in curs.fetchall()]

    def get(self, event_service_id: str) -> PayoutRow | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self._select_one, (event_service_id,))
            row = curs.fetchone()
            return None if row is None else payout_row(row)

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
        view = PostgresPayoutsView(self.datastore, table=staging_name(self.table), indexes=False)
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

    def row_writer(self) -> PostgresRowWriter:
        return PostgresRowWriter(self)

    def missing_columns(self) -> list[str]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s",
                (self.datastore.schema, self.table),
            )
            present = {str(r["column_name"]) for r in curs.fetchall()}
        return [name for name in COLUMNS if present and name not in present]

    def drop(self) -> None:
        schema = Identifier(self.datastore.schema)
        with self.datastore.transaction(commit=True) as curs:
            for name in (self.table, self.tracking_table_name):
                curs.execute(
                    SQL("DROP TABLE IF EXISTS {schema}.{n}").format(
                        schema=schema, n=Identifier(name)
                    )
                )


class PostgresRowWriter(RowWriter):
    """A rebuild's rows, written into the staging table: each batch one transaction
    with its tracking record, new rows inserted and changed ones upserted.

    A batch's rows go to the server as one JSON document
    ([`json_rows`][payout_ledger.adapters.projection.view.json_rows]), which the
    server reads into the table's own column types: adapting each value in
    Python (``COPY`` or a statement per row) costs ten times as much, under
    the GIL the fold needs. A batch JSON cannot carry exactly is written by
    ``COPY`` and an upsert per row.
    """

    def __init__(self, view: PostgresPayoutsView) -> None:
        super().__init__()
        self._view = view
        schema, t = Identifier(view.datastore.schema), Identifier(view.table)
        cols = SQL(", ").join(Identifier(c) for c in COLUMNS)
        self._copy = SQL("COPY {schema}.{t} ({cols}) FROM STDIN").format(
            schema=schema, t=t, cols=cols
        )
        self._upsert_update = SQL("ON CONFLICT (payout_id) DO UPDATE SET {updates}").format(
            updates=SQL(", ").join(
                SQL("{c} = EXCLUDED.{c}").format(c=Identifier(c))
                for c in COLUMNS
                if c != "payout_id"
            )
        )
        self._upsert = SQL("INSERT INTO {schema}.{t} ({cols}) VALUES ({vals}) {update}").format(
            schema=schema,
            t=t,
            cols=cols,
            vals=SQL(", ").join(SQL("%s") for _ in COLUMNS),
            update=self._upsert_update,
        )
        self._select = SQL("SELECT {cols} FROM {schema}.{t} WHERE payout_id = ANY(%s)").format(
            schema=schema, t=t, cols=cols
        )
        with view.datastore.transaction(commit=False) as curs:
            curs.execute(
                "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                (f"{Identifier(view.datastore.schema).as_string(curs)}.{t.as_string(curs)}",),
            )
            types = {str(r["attname"]): str(r["type"]) for r in curs.fetchall()}
        from_json = SQL("SELECT {values} FROM jsonb_array_elements(%s::jsonb) AS r").format(
            values=SQL(", ").join(
                SQL("(r->>{i})::{type}").format(i=i, type=SQL(types[c]))
                for i, c in enumerate(COLUMNS)
            )
        )
        self._insert_json = SQL("INSERT INTO {schema}.{t} ({cols}) {rows}").format(
            schema=schema, t=t, cols=cols, rows=from_json
        )
        self._upsert_json = SQL("INSERT INTO {schema}.{t} ({cols}) {rows} {update}").format(
            schema=schema, t=t, cols=cols, rows=from_json, update=self._upsert_update
        )
        self._tracked: int | None = None

    def _load(self, payout_ids: Sequence[str]) -> dict[str, Row]:
        with self._view.datastore.transaction(commit=False) as curs:
            curs.execute(self._select, ([UUID(hex=i) for i in payout_ids],))
            return {r["payout_id"].hex: tuple(r[c] for c in COLUMNS) for r in curs.fetchall()}

    def _write(
        self, application_name: str, new: Sequence[Row], changed: Sequence[Row], through: int
    ) -> None:
        with self._view.datastore.transaction(commit=True) as curs:
            if new:
                document = json_rows(new)
                if document is not None:
                    curs.execute(self._insert_json, (document,))
                else:
                    with curs.copy(self._copy) as copy:
                        for row in new:
                            copy.write_row(row)
            if changed:
                document = json_rows(changed)
                if document is not None:
                    curs.execute(self._upsert_json, (document,))
                else:
                    curs.executemany(self._upsert, changed)
            if self._tracked is None or through > self._tracked:
                self._view._insert_tracking(curs, Tracking(application_name, through))
        self._tracked = through

    def _finish(self, view: PayoutsView, application_name: str, through: int | None) -> None:
        if through is not None and (self._tracked is None or through > self._tracked):
            self._view.insert_tracking(Tracking(application_name, through))
            self._tracked = through
        view.replace_with(self._view, application_name)

    def _close(self) -> None:
        pass

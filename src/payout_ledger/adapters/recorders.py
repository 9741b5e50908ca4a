"""A PostgreSQL recorder that saves in one round trip.

eventsourcing's PostgreSQL application recorder saves in five round trips:
BEGIN; SET LOCAL lock_timeout, LOCK TABLE ... IN EXCLUSIVE MODE, NOTIFY and
INSERT pipelined; a Sync; COMMIT; another Sync. Three of them happen while the
table lock is held. This recorder keeps the same protocol - the same lock with
the same timeout (so notification ids still commit in order), the same NOTIFY,
the same rows - inside one plpgsql function, called in autocommit, so the lock
is taken and released within one statement's transaction on the server.

A claim whose first version is already committed fails before it queues for
the lock, with the same unique violation the INSERT would raise: losers of a
race do not wait behind the winner's commit. A save of one or two events (a
claim, an outcome) calls a variant with scalar parameters, sparing the client
psycopg's array adaptation. ``docs/performance.md`` has the measurements.

The function is created with the table (``create_tables``); a DBA who creates
the schema by hand must create it too (``payout-ledger`` prints nothing for
that yet: run the ledger once with ``create_tables=True``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import retry
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

__all__ = ["OneRoundTripRecorder"]

_COLUMNS = (("id", "uuid"), ("version", "bigint"), ("topic", "text"), ("state", "bytea"))
_SCALAR_SAVES = (1, 2)


class OneRoundTripRecorder(PostgresApplicationRecorder):
    """eventsourcing's save protocol, unchanged, in one round trip instead of five."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._insert_arrays = self._add_function(
            "insert_one_trip",
            params=["ids uuid[]", "versions bigint[]", "topics text[]", "states bytea[]"],
            first="ids[1]",
            first_version="versions[1]",
            rows="SELECT * FROM unnest(ids, versions, topics, states)",
        )
        # A claim saves one event and an outcome two: for those, scalar parameters
        # spare psycopg's array adaptation, which costs more client CPU than the call.
        self._insert_rows = {
            n: self._add_function(
                f"insert_rows_{n}",
                params=[f"{c}{i} {t}" for i in range(1, n + 1) for c, t in _COLUMNS],
                first="id1",
                first_version="version1",
                rows="VALUES "
                + ", ".join(f"(id{i}, version{i}, topic{i}, state{i})" for i in range(1, n + 1)),
            )
            for n in _SCALAR_SAVES
        }

    def _add_function(
        self, suffix: str, *, params: list[str], first: str, first_version: str, rows: str
    ) -> str:
        """Create ``{table}_{suffix}(params)`` with the table; the statement that calls it,
        composed once (psycopg encodes a text query in each connection's own encoding,
        and would compose and quote a ``Composed`` one again at every call)."""
        schema = Identifier(self.datastore.schema)
        table = Identifier(self.events_table_name)
        function = Identifier(f"{self.events_table_name}_{suffix}")
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{function}({params}) "
                "RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$ BEGIN "
                # A claim that already lost fails before queueing for the table lock.
                "IF EXISTS (SELECT 1 FROM {schema}.{table} t WHERE t.originator_id = {first} "
                "AND t.originator_version = {first_version}) THEN RAISE unique_violation USING "
                "MESSAGE = 'duplicate key value violates unique constraint (checked early)'; "
                "END IF; "
                "SET LOCAL lock_timeout = '{timeout}s'; "
                "LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; "
                "NOTIFY {channel}; "
                "RETURN QUERY INSERT INTO {schema}.{table} "
                "(originator_id, originator_version, topic, state) "
                "{rows} RETURNING notification_id; END; $BODY$"
            ).format(
                schema=schema,
                table=table,
                function=function,
                params=SQL(", ".join(params)),
                first=SQL(first),
                first_version=SQL(first_version),
                rows=SQL(rows),
                timeout=SQL(str(int(self.datastore.lock_timeout))),
                channel=Identifier(self.channel_name),
            )
        )
        placeholders = SQL(", ".join(["%s"] * len(params)))
        return (
            SQL("SELECT * FROM {schema}.{function}({placeholders})")
            .format(schema=schema, function=function, placeholders=placeholders)
            .as_string()
        )

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if not stored_events:
            return []
        statement, params = self._insert_statement(stored_events)
        with (
            self.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as curs,
        ):
            curs.execute(statement, params, prepare=True)
            return [row[0] for row in curs.fetchall()]

    def _insert_statement(
        self, stored_events: Sequence[StoredEvent]
    ) -> tuple[str, tuple[Any, ...]]:
        """The function call that saves these events, and its parameters."""
        statement = self._insert_rows.get(len(stored_events))
        if statement is not None:
            return statement, tuple(
                value
                for e in stored_events
                for value in (e.originator_id, e.originator_version, e.topic, e.state)
            )
        return self._insert_arrays, (
            [e.originator_id for e in stored_events],
            [e.originator_version for e in stored_events],
            [e.topic for e in stored_events],
            [e.state for e in stored_events],
        )

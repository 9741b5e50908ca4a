"""Helpers for the audit tests: raw access to the stored events, and replays."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from uuid import UUID

import psycopg

from payout_ledger import PayoutLedger
from payout_ledger.audit import iter_notifications


@dataclass(frozen=True)
class RawRow:
    """A stored event as the database has it."""

    notification_id: int
    originator_id: UUID
    originator_version: int
    topic: str
    state: bytes

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.state))


class RawStore:
    """Edit the events table behind the ledger's back, as an attacker with write access.

    SQLite: ``stored_events`` (notification id = rowid). PostgreSQL:
    ``payoutledger_events`` in the URL's schema.
    """

    def __init__(self, store_url: str) -> None:
        parts = urlsplit(store_url)
        self.kind = "sqlite" if parts.scheme == "sqlite" else "postgres"
        if self.kind == "sqlite":
            self.path = Path(store_url[len("sqlite:///") :])
            self.table, self.id_column = "stored_events", "rowid"
        else:
            query = dict(parse_qsl(parts.query))
            schema = query.pop("schema")
            self.conninfo = urlunsplit(parts._replace(query=urlencode(query)))
            self.table, self.id_column = f"{schema}.payoutledger_events", "notification_id"

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.path)
            try:
                yield conn.cursor()
                conn.commit()
            finally:
                conn.close()
        else:
            with psycopg.connect(self.conninfo) as pg, pg.cursor() as cursor:
                yield cursor

    def _sql(self, statement: str) -> str:
        statement = statement.replace("{t}", self.table).replace("{id}", self.id_column)
        return statement if self.kind == "postgres" else statement.replace("%s", "?")

    def _oid(self, originator_id: UUID) -> Any:
        return originator_id.hex if self.kind == "sqlite" else originator_id

    def rows(self) -> list[RawRow]:
        with self._cursor() as c:
            c.execute(
                self._sql(
                    "SELECT {id}, originator_id, originator_version, topic, state "
                    "FROM {t} ORDER BY {id}"
                )
            )
            return [RawRow(r[0], UUID(str(r[1])), r[2], r[3], bytes(r[4])) for r in c.fetchall()]

    def row(self, notification_id: int) -> RawRow:
        [row] = [r for r in self.rows() if r.notification_id == notification_id]
        return row

    def set_state(self, notification_id: int, state: bytes) -> None:
        with self._cursor() as c:
            c.execute(
                self._sql("UPDATE {t} SET state = %s WHERE {id} = %s"), (state, notification_id)
            )

    def edit(self, notification_id: int, change: Callable[[dict[str, Any]], None]) -> None:
        """Rewrite one event's JSON state."""
        state = self.row(notification_id).json()
        change(state)
        self.set_state(notification_id, json.dumps(state, separators=(",", ":")).encode())

    def delete(self, notification_id: int) -> None:
        with self._cursor() as c:
            c.execute(self._sql("DELETE FROM {t} WHERE {id} = %s"), (notification_id,))

    def insert(self, notification_id: int, row: RawRow) -> None:
        """Insert a row under a chosen notification id."""
        with self._cursor() as c:
            c.execute(
                self._sql(
                    "INSERT INTO {t} ({id}, originator_id, originator_version, topic, state) "
                    "VALUES (%s, %s, %s, %s, %s)"
                ),
                (notification_id, self._oid(row.originator_id), row.originator_version, row.topic,
                 row.state),
            )  # fmt: skip

    def restore(self, rows: list[RawRow]) -> None:
        """Make the table hold exactly ``rows`` again, under their own notification ids."""
        with self._cursor() as c:
            c.execute(self._sql("DELETE FROM {t}"))
            c.executemany(
                self._sql(
                    "INSERT INTO {t} ({id}, originator_id, originator_version, topic, state) "
                    "VALUES (%s, %s, %s, %s, %s)"
                ),
                [
                    (r.notification_id, self._oid(r.originator_id), r.originator_version, r.topic,
                     r.state)
                    for r in rows
                ],
            )  # fmt: skip

    def swap(self, first: int, second: int) -> None:
        """Exchange two events' places in the log (their notification ids)."""
        parking = -1_000_000
        with self._cursor() as c:
            for old, new in ((first, parking), (second, first), (parking, second)):
                c.execute(self._sql("UPDATE {t} SET {id} = %s WHERE {id} = %s"), (new, old))


def replay_all(ledger: PayoutLedger) -> dict[UUID, Any]:
    """Every aggregate, rebuilt by folding the log in notification order."""
    aggregates: dict[UUID, Any] = {}
    for n in iter_notifications(ledger):
        event: Any = ledger.mapper.to_domain_event(n)
        aggregates[event.originator_id] = event.mutate(aggregates.get(event.originator_id))
    return aggregates


def state_of(aggregate: Any) -> dict[str, Any]:
    """An aggregate's whole state, pending events aside."""
    return {k: v for k, v in vars(aggregate).items() if k != "_pending_events"}


def last_id(ledger: PayoutLedger) -> int:
    return ledger.recorder.max_notification_id() or 0


def notification_ids(ledger: PayoutLedger, aggregate_id: UUID) -> list[int]:
    """The notification ids of one aggregate's events, oldest first."""
    return [n.id for n in iter_notifications(ledger) if n.originator_id == aggregate_id]

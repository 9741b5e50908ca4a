"""A rate budget shared by every process and host that uses the ledger's store.

One row per budget name in ``payout_ledger_rate_budget``, holding the schedule of
the next free slot (GCRA's "theoretical arrival time", ``tat``) and
``blocked_until``, set when Stripe answered 429 so that the whole budget backs
off. Both are seconds since the epoch on the *database's* clock
(``clock_timestamp()`` on PostgreSQL, ``julianday('now')`` on SQLite, which runs
on one host anyway): hosts' clocks may disagree by hours, and none of them is
ever read here.

Taking a token is one statement in one short transaction: an upsert that moves
``tat`` to ``max(tat, now, blocked_until) + 1/rate`` and returns the slot it
reserved and the database's ``now``. The caller sleeps ``slot - now`` on its own
monotonic clock, then sends. Slots are handed out one interval apart whatever
the number of takers, so the requests of all processes together keep to the
rate; a taker never polls. A block moves ``blocked_until`` forward (never back):
every slot reserved after it starts at or after its end. Slots reserved before
a block (at most one per request already waiting) are still used; they are few,
and a 429 they meet extends the block.

Neither can hold a taker back longer than the ``horizon`` it gives (one hour
unless the governor says less): each reservation first pulls ``tat`` and
``blocked_until`` back to at most ``now + horizon``. A database clock stepped
back, or a row edited by someone with a database login, would otherwise stall
every bulk release until the old schedule came round.

``memory://`` ledgers get the same schedule in the process, on its monotonic clock.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from eventsourcing.persistence import IntegrityError, InternalError, ProgrammingError
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore
from psycopg.sql import SQL, Identifier

__all__ = [
    "DEFAULT_HORIZON",
    "RATE_BUDGET_TABLE",
    "MemoryRateBudget",
    "PostgresRateBudget",
    "RateBudget",
    "Reservation",
    "SQLiteRateBudget",
    "open_rate_budget",
]

DEFAULT_HORIZON = 3600.0
"""Seconds: the longest a reservation makes its taker wait, whatever the row says."""

RATE_BUDGET_TABLE = "payout_ledger_rate_budget"
"""The table of rate budgets, in the ledger's database (one row per budget name)."""


@dataclass(frozen=True)
class Reservation:
    """A slot reserved in a budget: when the request may be sent.

    ``slot`` and ``now`` are on the store's clock (seconds since the epoch);
    only their difference, ``wait``, is used by the taker.
    """

    slot: float
    now: float

    @property
    def wait(self) -> float:
        """Seconds to wait before sending (zero when the slot is now or past)."""
        return max(0.0, self.slot - self.now)


class RateBudget(Protocol):
    """A named rate budget: slots one ``1/rate`` apart, and a shared back-off."""

    name: str

    def reserve(self, interval: float, horizon: float = DEFAULT_HORIZON) -> Reservation:
        """Reserve the next free slot and move the schedule ``interval`` seconds on;
        the slot is at most ``horizon`` seconds from now."""
        ...

    def block(self, seconds: float) -> float:
        """No slot before ``seconds`` from now (on the store's clock); returns the
        seconds the budget is blocked from now (a longer block already set wins)."""
        ...


class MemoryRateBudget:
    """The budget of a ``memory://`` ledger: in this process, on its monotonic clock."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._tat = 0.0
        self._blocked_until = 0.0

    def reserve(self, interval: float, horizon: float = DEFAULT_HORIZON) -> Reservation:
        with self._lock:
            now = time.monotonic()
            slot = max(min(self._tat, now + horizon), now, min(self._blocked_until, now + horizon))
            self._tat = slot + interval
            return Reservation(slot=slot, now=now)

    def block(self, seconds: float) -> float:
        with self._lock:
            now = time.monotonic()
            self._blocked_until = max(self._blocked_until, now + seconds)
            return self._blocked_until - now


# SQLite's clock: julianday('now') is one value for the whole statement, in days.
_SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


class SQLiteRateBudget:
    """The budget in the ledger's SQLite file (one writer at a time, like its events)."""

    def __init__(self, datastore: SQLiteDatastore, name: str) -> None:
        self.name = name
        self._datastore = datastore
        t = RATE_BUDGET_TABLE
        self._create = (
            f"CREATE TABLE IF NOT EXISTS {t} (name TEXT PRIMARY KEY, "
            "tat REAL NOT NULL, blocked_until REAL NOT NULL) WITHOUT ROWID"
        )
        self._reserve = (
            f"INSERT INTO {t} (name, tat, blocked_until) "  # noqa: S608 - constant names
            f"VALUES (:name, {_SQLITE_NOW} + :interval, 0) "
            "ON CONFLICT (name) DO UPDATE SET "
            f"tat = max(min(tat, {_SQLITE_NOW} + :horizon), {_SQLITE_NOW}, "
            f"min(blocked_until, {_SQLITE_NOW} + :horizon)) + :interval, "
            f"blocked_until = min(blocked_until, {_SQLITE_NOW} + :horizon) "
            f"RETURNING tat - :interval, {_SQLITE_NOW}"
        )
        self._block = (
            f"INSERT INTO {t} (name, tat, blocked_until) "  # noqa: S608 - constant names
            f"VALUES (:name, 0, {_SQLITE_NOW} + :seconds) "
            "ON CONFLICT (name) DO UPDATE SET "
            f"blocked_until = max(blocked_until, {_SQLITE_NOW} + :seconds) "
            f"RETURNING blocked_until - {_SQLITE_NOW}"
        )

    def create_table(self) -> None:
        with self._datastore.transaction(commit=True) as curs:
            curs.execute(self._create)

    def reserve(self, interval: float, horizon: float = DEFAULT_HORIZON) -> Reservation:
        params = {"name": self.name, "interval": interval, "horizon": horizon}
        row = self._one(self._reserve, params)
        return Reservation(slot=float(row[0]), now=float(row[1]))

    def block(self, seconds: float) -> float:
        return float(self._one(self._block, {"name": self.name, "seconds": seconds})[0])

    def _one(self, statement: str, params: dict[str, Any]) -> Any:
        with self._datastore.transaction(commit=True) as curs:
            curs.execute(statement, params)
            return curs.fetchone()


class PostgresRateBudget:
    """The budget in the ledger's PostgreSQL schema, on the server's ``clock_timestamp()``.

    Each token is one autocommitted statement: the row lock it takes is held
    for that statement only, so takers on many hosts queue for microseconds.
    """

    def __init__(self, datastore: PostgresDatastore, name: str) -> None:
        self.name = name
        self._datastore = datastore
        table = SQL("{}.{}").format(Identifier(datastore.schema), Identifier(RATE_BUDGET_TABLE))
        now = SQL("extract(epoch FROM clock_timestamp())::float8")
        self._create = SQL(
            "CREATE TABLE IF NOT EXISTS {table} (name text PRIMARY KEY, "
            "tat float8 NOT NULL, blocked_until float8 NOT NULL)"
        ).format(table=table)
        # In ON CONFLICT DO UPDATE the SET is evaluated once the row is locked, so
        # "now" is read after any wait for another taker's statement.
        self._reserve = SQL(
            "INSERT INTO {table} AS b (name, tat, blocked_until) "
            "VALUES (%(name)s, {now} + %(interval)s, 0) "
            "ON CONFLICT (name) DO UPDATE SET "
            "tat = GREATEST(LEAST(b.tat, {now} + %(horizon)s), {now}, "
            "LEAST(b.blocked_until, {now} + %(horizon)s)) + %(interval)s, "
            "blocked_until = LEAST(b.blocked_until, {now} + %(horizon)s) "
            "RETURNING b.tat - %(interval)s AS slot, {now} AS now"
        ).format(table=table, now=now)
        self._block = SQL(
            "INSERT INTO {table} AS b (name, tat, blocked_until) "
            "VALUES (%(name)s, 0, {now} + %(seconds)s) "
            "ON CONFLICT (name) DO UPDATE SET "
            "blocked_until = GREATEST(b.blocked_until, {now} + %(seconds)s) "
            "RETURNING b.blocked_until - {now} AS blocked"
        ).format(table=table, now=now)

    def create_table(self) -> None:
        with self._datastore.get_connection() as conn:
            conn.execute(self._create)

    def reserve(self, interval: float, horizon: float = DEFAULT_HORIZON) -> Reservation:
        params = {"name": self.name, "interval": interval, "horizon": horizon}
        row = self._one(self._reserve, params)
        return Reservation(slot=float(row["slot"]), now=float(row["now"]))

    def block(self, seconds: float) -> float:
        return float(self._one(self._block, {"name": self.name, "seconds": seconds})["blocked"])

    def _one(self, statement: Any, params: dict[str, Any]) -> Any:
        with self._datastore.get_connection() as conn:
            return conn.execute(statement, params, prepare=True).fetchone()


_DDL_ATTEMPTS = 6


def open_rate_budget(datastore: object, name: str, *, create: bool = True) -> RateBudget:
    """The budget ``name`` in the store behind ``datastore`` (a ledger's
    ``factory.datastore``; None or anything else: an in-process budget).

    The table is created if missing (``create``). Processes starting together
    race on PostgreSQL's catalog; every statement is IF NOT EXISTS, so the loser
    tries again after a short pause, as the events table's creation does.
    """
    budget: SQLiteRateBudget | PostgresRateBudget
    if isinstance(datastore, SQLiteDatastore):
        budget = SQLiteRateBudget(datastore, name)
    elif isinstance(datastore, PostgresDatastore):
        budget = PostgresRateBudget(datastore, name)
    else:
        return MemoryRateBudget(name)
    if create:
        _create_table(budget)
    return budget


def _create_table(budget: SQLiteRateBudget | PostgresRateBudget) -> None:
    for attempt in range(1, _DDL_ATTEMPTS + 1):
        try:
            budget.create_table()
        except (IntegrityError, InternalError, ProgrammingError):
            if attempt == _DDL_ATTEMPTS:
                raise
            time.sleep(random.uniform(0.05, 0.2) * attempt)
        else:
            return

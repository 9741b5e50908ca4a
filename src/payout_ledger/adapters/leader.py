"""Leader election for the maintenance worker: one leader per store, released on death.

Every host may run ``payout-ledger worker``; only the one holding the store's
leader lock does the work. The lock is one the operating system or the
database server drops by itself when its holder dies, so a worker killed with
SIGKILL (or whose host is lost) never keeps it:

* PostgreSQL: a session-level ``pg_try_advisory_lock`` on a connection of its
  own, released when its socket closes (or the server's TCP keepalives give up
  on it);
* SQLite: ``flock`` on ``<database file>.worker-lock``, released when the
  kernel closes its file descriptor;
* ``memory://``: none, the process is the whole store and always leads.

On PostgreSQL the lock's key is derived from the schema and the events
table, so workers of one store (and only they) compete. The lock connection
has client-side TCP keepalives and ``tcp_user_timeout`` (the leader notices a
lost database) and asks the server for the same on its side (the server drops
the session, and the lock, of a host that vanished without closing its
socket), all within ``worker_lease_seconds``. The lock needs a session that
lasts: through PgBouncer, use session pooling (or connect directly).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import psycopg

from payout_ledger.settings import LedgerSettings, redact_url, store_environment

__all__ = [
    "FileLeaderLock",
    "LeaderLock",
    "PostgresLeaderLock",
    "SoleLeader",
    "advisory_key",
    "leader_lock",
]

logger = logging.getLogger("payout_ledger.worker")

LOCK_FILE_SUFFIX = ".worker-lock"
"""Beside an SQLite database file: the file its workers lock."""


class LeaderLock(ABC):
    """A lock at most one worker of a store holds at a time, dropped if its holder dies."""

    description: str
    """What is locked, for logs (never a password)."""

    @abstractmethod
    def try_lead(self) -> bool:
        """Take the lock if it is free; True while this object holds it. Never blocks
        longer than a connection attempt, never raises for an unreachable store."""

    @abstractmethod
    def still_leading(self) -> bool:
        """Whether the lock is still held (on PostgreSQL: asked of the server). A lock
        found lost is given up: ``try_lead`` must take it again."""

    @abstractmethod
    def release(self) -> None:
        """Give the lock up (nothing if not held); another worker may take it at once."""

    def close(self) -> None:
        """Release and free what the lock holds (its connection or file)."""
        self.release()

    def __enter__(self) -> LeaderLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SoleLeader(LeaderLock):
    """``memory://``: the store lives in this process, which always leads it."""

    description = "memory:// (always leading)"

    def __init__(self) -> None:
        self._leading = False

    def try_lead(self) -> bool:
        self._leading = True
        return True

    def still_leading(self) -> bool:
        return self._leading

    def release(self) -> None:
        self._leading = False


class FileLeaderLock(LeaderLock):
    """An exclusive ``flock`` on a file: released by the kernel when the process dies.

    Each object opens the file itself, so two objects in one process exclude
    each other too. The holder writes its host name and pid into the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"flock {path}"
        self._fd: int | None = None

    def try_lead(self) -> bool:
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:  # another user's lock file: a read-only one locks as well
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError as exc:
                logger.warning("cannot open the leader lock file %s: %s", self.path, exc.strerror)
                return False
        except OSError as exc:
            logger.warning("cannot open the leader lock file %s: %s", self.path, exc.strerror)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another worker (BlockingIOError), or no locks here
            os.close(fd)
            return False
        self._fd = fd
        with contextlib.suppress(OSError):  # who leads, for an operator; not needed
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
        return True

    def still_leading(self) -> bool:
        return self._fd is not None  # an flock lasts as long as its descriptor

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def advisory_key(schema: str, table: str) -> int:
    """The advisory lock key of the workers of the events table ``schema.table``.

    A signed 64-bit integer (what ``pg_try_advisory_lock(bigint)`` takes),
    derived from the names, so that stores sharing a database do not share
    a leader.
    """
    digest = hashlib.blake2b(
        f"payout-ledger worker {schema}.{table}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresLeaderLock(LeaderLock):
    """A session-level advisory lock held on a connection of its own.

    The server releases it when the session ends: the process died and its
    socket closed, or the server's keepalives found the peer gone.
    """

    def __init__(self, settings: LedgerSettings, table: str, *, lease_seconds: float) -> None:
        env = store_environment(settings)
        self.schema = env.get("POSTGRES_SCHEMA") or "public"
        self.key = advisory_key(self.schema, table)
        self.description = (
            f"advisory lock {self.key} on {redact_url(settings.store_url)} ({self.schema}.{table})"
        )
        self._password = env["POSTGRES_PASSWORD"]
        self._connect_args = _connect_args(env, settings, lease_seconds)
        self._conn: psycopg.Connection[Any] | None = None
        self._leading = False

    def try_lead(self) -> bool:
        if self._leading:
            return self.still_leading()
        try:
            conn = self._connection()
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        except psycopg.Error as exc:
            self._lost(exc, "cannot ask for the leader lock")
            return False
        self._leading = bool(row and row[0])
        return self._leading

    def still_leading(self) -> bool:
        if not self._leading or self._conn is None:
            return False
        try:
            row = self._conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND pid = pg_backend_pid() AND database = (SELECT oid FROM pg_database"
                " WHERE datname = current_database()) AND classid::bigint = %s"
                " AND objid::bigint = %s AND objsubid = 1",
                ((self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF),
            ).fetchone()
        except psycopg.Error as exc:
            self._lost(exc, "the leader lock's connection failed")
            return False
        if not (row and row[0]):
            logger.warning("the leader lock %s is no longer held", self.key)
            self._drop_connection()
            return False
        return True

    def release(self) -> None:
        if self._leading and self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        self._drop_connection()  # closing the session releases the lock in any case

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(**self._connect_args)
        return self._conn

    def _lost(self, exc: psycopg.Error, what: str) -> None:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self._password:
            reason = reason.replace(self._password, "***")
        logger.warning("%s (%s): %s", what, self.description, reason)
        self._drop_connection()

    def _drop_connection(self) -> None:
        conn, self._conn, self._leading = self._conn, None, False
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                conn.close()


def _connect_args(
    env: dict[str, str], settings: LedgerSettings, lease_seconds: float
) -> dict[str, Any]:
    """psycopg's arguments for the lock connection: keepalives on both ends within the lease."""
    idle = max(1, int(lease_seconds / 3))
    interval = max(1, int(lease_seconds / 9))
    count = 3
    user_timeout_ms = max(1000, int(lease_seconds * 1000 * 2 / 3))
    server = (
        f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} "
        f"-c tcp_keepalives_count={count} -c tcp_user_timeout={user_timeout_ms} "
        f"-c statement_timeout={max(1000, int(lease_seconds * 1000))}"
    )
    return {
        "dbname": env["POSTGRES_DBNAME"],
        "host": env["POSTGRES_HOST"],
        "port": env["POSTGRES_PORT"],
        "user": env["POSTGRES_USER"],
        "password": env["POSTGRES_PASSWORD"],
        "connect_timeout": max(1, min(settings.postgres_connect_timeout, int(lease_seconds))),
        "application_name": f"payout-ledger worker {socket.gethostname()[:30]} {os.getpid()}",
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": interval,
        "keepalives_count": count,
        "tcp_user_timeout": user_timeout_ms,
        "options": server,
        "autocommit": True,
    }


def leader_lock(settings: LedgerSettings, *, table: str, lease_seconds: float) -> LeaderLock:
    """The leader lock of the store ``settings.store_url`` names (``table``: its events table)."""
    env = store_environment(settings)
    module = env["PERSISTENCE_MODULE"]
    if module == "eventsourcing.postgres":
        return PostgresLeaderLock(settings, table, lease_seconds=lease_seconds)
    if module == "eventsourcing.sqlite":
        return FileLeaderLock(Path(env["SQLITE_DBNAME"] + LOCK_FILE_SUFFIX))
    return SoleLeader()

"""Leader election: one leader per store, released on close and on process death."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg
import pytest

from payout_ledger import LedgerSettings
from payout_ledger.adapters.leader import (
    FileLeaderLock,
    LeaderLock,
    PostgresLeaderLock,
    SoleLeader,
    advisory_key,
    leader_lock,
)
from tests.conftest import with_query

REPO = Path(__file__).resolve().parents[2]
TABLE = "payoutledger_events"
LEASE = 3.0


def lock_for(store_url: str, lease: float = LEASE) -> LeaderLock:
    return leader_lock(LedgerSettings(store_url=store_url), table=TABLE, lease_seconds=lease)


def conninfo(store_url: str) -> str:
    """libpq's URL of the store's database (``host=/socket/dir`` kept, ``schema`` dropped)."""
    parts = urlsplit(store_url)
    query = {k: v for k, v in parse_qsl(parts.query) if k != "schema"}
    return parts._replace(query=urlencode(query)).geturl()


def schema_of(store_url: str) -> str:
    return dict(parse_qsl(urlsplit(store_url).query))["schema"]


def test_each_store_gets_its_kind_of_lock(sqlite_url: str, postgres_url: str) -> None:
    assert isinstance(lock_for("memory://"), SoleLeader)
    assert isinstance(lock_for(sqlite_url), FileLeaderLock)
    assert isinstance(lock_for(postgres_url), PostgresLeaderLock)


def test_two_locks_in_one_process_exclude_each_other(durable_store_url: str) -> None:
    """Only one of two lock objects on one store leads; the other leads once it is released."""
    first, second = lock_for(durable_store_url), lock_for(durable_store_url)
    try:
        assert first.try_lead()
        assert not second.try_lead()
        assert first.still_leading() and not second.still_leading()
        assert first.try_lead()  # asking again while leading keeps the lock

        first.release()

        assert not first.still_leading()
        assert second.try_lead()
        assert not first.try_lead()
    finally:
        first.close()
        second.close()


def test_closing_a_lock_releases_it(durable_store_url: str) -> None:
    with lock_for(durable_store_url) as first:
        assert first.try_lead()
    with lock_for(durable_store_url) as second:
        assert second.try_lead()


HOLDER = """
import sys, time
from payout_ledger import LedgerSettings
from payout_ledger.adapters.leader import leader_lock
lock = leader_lock(LedgerSettings(store_url=sys.argv[1]), table=sys.argv[2], lease_seconds=3)
print("leading" if lock.try_lead() else "following", flush=True)
time.sleep(600)
"""


@contextmanager
def holder(store_url: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A process that takes the store's lock if it can, says whether, and sleeps."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, store_url, TABLE],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        yield proc, proc.stdout.readline().strip()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def wait_to_lead(lock: LeaderLock, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if lock.try_lead():
            return True
        time.sleep(0.05)
    return False


def test_a_killed_process_releases_its_lock(durable_store_url: str) -> None:
    """Another process leads while one holds the lock; SIGKILL it and the lock is free."""
    with holder(durable_store_url) as (proc, said):
        assert said == "leading"
        with holder(durable_store_url) as (_, said_too):
            assert said_too == "following"
        with lock_for(durable_store_url) as lock:
            assert not lock.try_lead()
            proc.kill()
            proc.wait()
            assert wait_to_lead(lock, 20), "the dead holder's lock was never released"


@pytest.mark.postgres
def test_a_leader_whose_session_is_ended_steps_down(postgres_url: str) -> None:
    """The server ends the lock's session: the holder finds out and another leads."""
    first, second = lock_for(postgres_url), lock_for(postgres_url)
    try:
        assert first.try_lead()
        with psycopg.connect(conninfo(postgres_url), autocommit=True) as admin:
            key = advisory_key(schema_of(postgres_url), TABLE)
            [(holder,)] = admin.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid::bigint = %s AND objid::bigint = %s",
                ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
            ).fetchall()
            admin.execute("SELECT pg_terminate_backend(%s)", (holder,))
        assert wait_to_lead(second, 10)
        assert not first.still_leading()
        assert not first.try_lead()
    finally:
        first.close()
        second.close()


@pytest.mark.postgres
def test_stores_in_other_schemas_have_leaders_of_their_own(postgres_url: str) -> None:
    other_schema = "test_other_" + schema_of(postgres_url)[-8:]
    with psycopg.connect(conninfo(postgres_url), autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {other_schema}")
    try:
        with (
            lock_for(postgres_url) as here,
            lock_for(with_query(postgres_url, schema=other_schema)) as there,
        ):
            assert here.try_lead() and there.try_lead()
    finally:
        with psycopg.connect(conninfo(postgres_url), autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {other_schema} CASCADE")
    assert advisory_key("a", TABLE) != advisory_key("b", TABLE)


@pytest.mark.postgres
def test_the_lock_connection_shows_no_password(
    postgres_server_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreachable server is logged and answered False, without the password."""
    parts = urlsplit(postgres_server_url)
    url = f"postgresql://postgres:s3cret-pw@127.0.0.1:1{parts.path}"
    lock = lock_for(url)
    with caplog.at_level(logging.WARNING, logger="payout_ledger.worker"):
        assert not lock.try_lead()
    assert "s3cret-pw" not in lock.description
    assert "***" in lock.description
    assert caplog.records, "the failed attempt is logged"
    assert all("s3cret-pw" not in r.getMessage() for r in caplog.records)
    lock.close()


@pytest.mark.postgres
def test_the_lock_connection_has_keepalives_within_the_lease(postgres_url: str) -> None:
    lock = lock_for(postgres_url, lease=9)
    assert isinstance(lock, PostgresLeaderLock)
    try:
        assert lock.try_lead()
        conn = lock._connection()
        idle, interval, count = (
            int(conn.execute(f"SHOW tcp_keepalives_{name}").fetchone()[0])  # type: ignore[index]
            for name in ("idle", "interval", "count")
        )
        assert idle + interval * count <= 9
        assert conn.info.get_parameters().get("keepalives") == "1"
    finally:
        lock.close()


def test_memory_store_always_leads() -> None:
    lock = lock_for("memory://")
    assert lock.try_lead() and lock.still_leading()
    lock.release()
    assert not lock.still_leading()

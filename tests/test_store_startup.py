"""Several processes opening a new PostgreSQL store at once all open it.

PostgreSQL's ``CREATE ... IF NOT EXISTS`` is not safe against a concurrent
creator: the loser can get "tuple concurrently updated", a unique violation in
the catalog, or "relation ... already exists". Every statement is idempotent,
so the ledger creates again after a short pause.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import ProgrammingError
from eventsourcing.postgres import PostgresApplicationRecorder

from payout_ledger import LedgerSettings, PayoutLedger, StoreUnavailableError
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.support import ALICE, release

pytestmark = pytest.mark.postgres


def open_ledger(url: str) -> PayoutLedger:
    return PayoutLedger(
        settings=LedgerSettings(store_url=url),
        providers=InMemoryProviderDirectory([ALICE]),
        gateway=InMemoryTransferGateway(),
    )


def losing_creator(error: Exception, times: int) -> Any:
    """``create_table`` that fails ``times`` times as a concurrent creator's loser would."""
    real = PostgresApplicationRecorder.create_table
    calls = {"n": 0}

    def create_table(self: PostgresApplicationRecorder) -> None:
        calls["n"] += 1
        if calls["n"] <= times:
            try:
                raise error
            except psycopg.Error as cause:
                raise ProgrammingError(str(cause)) from cause
        real(self)

    return create_table


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.DuplicateTable,
        psycopg.errors.DuplicateObject,
        psycopg.errors.DuplicateFunction,
    ],
)
def test_a_creator_that_loses_to_another_retries_and_opens_the_store(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, error: type[psycopg.Error]
) -> None:
    monkeypatch.setattr(
        PostgresApplicationRecorder,
        "create_table",
        losing_creator(error('relation "payoutledger_events" already exists'), times=2),
    )

    with open_ledger(postgres_url) as ledger:
        assert ledger.release_payment(release("es_1")).success


def test_another_programming_error_is_not_retried(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        PostgresApplicationRecorder,
        "create_table",
        losing_creator(psycopg.errors.InsufficientPrivilege("permission denied"), times=99),
    )

    with pytest.raises(StoreUnavailableError, match="permission denied"):
        open_ledger(postgres_url)


def test_eight_ledgers_opening_a_new_store_at_once_all_open_it(postgres_url: str) -> None:
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []
    opened: list[PayoutLedger] = []
    lock = threading.Lock()

    def start() -> None:
        barrier.wait()
        try:
            ledger = open_ledger(postgres_url)
        except BaseException as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                opened.append(ledger)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ledger in opened:
        ledger.close()

    assert errors == []
    assert len(opened) == 8

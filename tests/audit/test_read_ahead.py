"""Reading the log a page ahead: on PostgreSQL the next page is fetched while the reader works.

The read-ahead must change nothing a reader sees: the same pages in the same
order, an error where its page would have come, and no read left running when
the reader stops early.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any

import pytest

from payout_ledger import PayoutLedger
from payout_ledger.adapters import log
from payout_ledger.adapters.log import RawEvent, iter_states
from payout_ledger.audit import audit_ledger, verify_ledger
from payout_ledger.testing import InMemoryTransferGateway
from tests.audit.scenario import run_scenario

READ_AHEAD = "payout-ledger-read-ahead"


def _before_each_fetch(monkeypatch: pytest.MonkeyPatch, hook: Callable[[int], None]) -> None:
    """Call ``hook(n)`` before the n-th page is fetched (n from 1), in the fetching thread."""
    real = log._page_reader
    fetches = 0

    def page_reader(*args: Any, **kwargs: Any) -> Callable[[int], list[RawEvent]]:
        fetch = real(*args, **kwargs)

        def hooked(start: int) -> list[RawEvent]:
            nonlocal fetches
            fetches += 1
            hook(fetches)
            return fetch(start)

        return hooked

    monkeypatch.setattr(log, "_page_reader", page_reader)


def _read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(READ_AHEAD)]


@pytest.fixture
def written(ledger: PayoutLedger, gateway: InMemoryTransferGateway) -> PayoutLedger:
    """The ledger, with a history of every event type written."""
    run_scenario(ledger, gateway)
    return ledger


on_postgres = pytest.mark.parametrize(
    "store_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@pytest.mark.parametrize("page_size", [1, 2, 3, 7, 1000])
def test_pages_come_in_order_whatever_their_size(written: PayoutLedger, page_size: int) -> None:
    [whole] = list(iter_states(written, page_size=10_000))

    pages = list(iter_states(written, page_size=page_size))

    assert [row for page in pages for row in page] == whole
    assert all(0 < len(page) <= page_size for page in pages)
    assert len(pages) == -(-len(whole) // page_size)
    assert not _read_ahead_threads()


@on_postgres
def test_the_next_page_is_read_while_the_reader_holds_this_one(
    written: PayoutLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    second_read = threading.Event()
    readers: list[str] = []

    def hook(n: int) -> None:
        readers.append(threading.current_thread().name)
        if n == 2:
            second_read.set()

    _before_each_fetch(monkeypatch, hook)
    pages = iter_states(written, page_size=2)
    next(pages)

    assert second_read.wait(10), "the second page was not read while the reader held the first"
    assert readers[1].startswith(READ_AHEAD)
    pages.close()


@on_postgres
def test_a_reader_that_stops_early_leaves_no_read_running(
    written: PayoutLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_flight, release = threading.Event(), threading.Event()
    fetches: list[int] = []

    def hook(n: int) -> None:
        fetches.append(n)
        if n == 2:
            in_flight.set()
            release.wait(10)

    _before_each_fetch(monkeypatch, hook)
    pages = iter_states(written, page_size=2)
    next(pages)
    assert in_flight.wait(10)  # the second page's read has started
    threading.Timer(0.05, release.set).start()

    pages.close()  # waits for the read in flight, and starts no other

    assert release.is_set()
    assert not _read_ahead_threads()
    assert fetches == [1, 2]
    # Every connection went back to the pool: the ledger still reads.
    assert list(iter_states(written))


@on_postgres
def test_a_failed_read_raises_where_its_page_would_have_come(
    written: PayoutLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    def hook(n: int) -> None:
        if n == 3:
            raise ConnectionError("the server went away")

    _before_each_fetch(monkeypatch, hook)
    seen: list[list[RawEvent]] = []

    with pytest.raises(ConnectionError, match="went away"):
        seen.extend(iter_states(written, page_size=2))

    assert [len(page) for page in seen] == [2, 2]
    assert not _read_ahead_threads()


_RUN: contextvars.ContextVar[str] = contextvars.ContextVar("run", default="none")


@on_postgres
def test_a_page_read_ahead_is_read_in_the_readers_context(
    written: PayoutLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host's tracing (a span, a request id) kept in context variables covers the reads."""
    seen: list[tuple[str, str]] = []
    _before_each_fetch(
        monkeypatch, lambda n: seen.append((threading.current_thread().name, _RUN.get()))
    )
    _RUN.set("audit-42")

    pages = list(iter_states(written, page_size=2))

    assert len(pages) > 2
    assert len(seen) in (len(pages), len(pages) + 1)  # + the empty page after a full one
    assert any(name.startswith(READ_AHEAD) for name, _ in seen)
    assert {run for _, run in seen} == {"audit-42"}


@on_postgres
@pytest.mark.timeout(60)
def test_a_pool_of_one_connection_is_enough(written: PayoutLedger, make_ledger: Any) -> None:
    """The read ahead and the tools' own queries (rebuilding a payout or a chain head let go)
    take turns on one connection: the fetch never waits for the reader."""
    narrow = make_ledger(postgres_pool_size=1, postgres_max_overflow=0)

    tight = {"page_size": 2}
    audited = audit_ledger(narrow, summaries_limit=1, **tight)
    verified = verify_ledger(narrow, heads_limit=1, **tight)

    assert audited == audit_ledger(written)
    assert verified == verify_ledger(written)

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
from payout_ledger.testing import InMemoryTransferGateway
from tests.audit.scenario import run_scenario

READ_AHEAD = "payout-ledger-read-ahead"

Fetch = Callable[[int], list[RawEvent]]


def _wrap_fetch(monkeypatch: pytest.MonkeyPatch, wrap: Callable[[Fetch], Fetch]) -> None:
    """Make every page reader's fetch go through ``wrap``."""
    real = log._page_reader

    def page_reader(*args: Any, **kwargs: Any) -> Fetch:
        return wrap(real(*args, **kwargs))

    monkeypatch.setattr(log, "_page_reader", page_reader)


def _read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(READ_AHEAD)]


@pytest.mark.parametrize("page_size", [1, 2, 3, 7, 1000])
def test_pages_come_in_order_whatever_their_size(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, page_size: int
) -> None:
    run_scenario(ledger, gateway)
    [whole] = list(iter_states(ledger, page_size=10_000))

    pages = list(iter_states(ledger, page_size=page_size))

    assert [row for page in pages for row in page] == whole
    assert all(0 < len(page) <= page_size for page in pages)
    assert len(pages) == -(-len(whole) // page_size)
    assert not _read_ahead_threads()


@pytest.mark.postgres
@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_the_next_page_is_read_while_the_reader_holds_this_one(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_scenario(ledger, gateway)
    second_read = threading.Event()
    readers: list[str] = []

    def wrap(fetch: Fetch) -> Fetch:
        def counted(start: int) -> list[RawEvent]:
            readers.append(threading.current_thread().name)
            page = fetch(start)
            if len(readers) == 2:
                second_read.set()
            return page

        return counted

    _wrap_fetch(monkeypatch, wrap)
    pages = iter_states(ledger, page_size=2)
    next(pages)

    assert second_read.wait(10), "the second page was not read while the reader held the first"
    assert readers[1].startswith(READ_AHEAD)
    pages.close()


@pytest.mark.postgres
@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_a_reader_that_stops_early_leaves_no_read_running(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_scenario(ledger, gateway)
    release = threading.Event()
    calls: list[int] = []

    def wrap(fetch: Fetch) -> Fetch:
        def slow(start: int) -> list[RawEvent]:
            calls.append(start)
            if len(calls) == 2:
                release.wait(10)
            return fetch(start)

        return slow

    _wrap_fetch(monkeypatch, wrap)
    pages = iter_states(ledger, page_size=2)
    next(pages)
    threading.Timer(0.05, release.set).start()

    pages.close()  # waits for the read in flight, and starts no other

    assert not _read_ahead_threads()
    assert len(calls) == 2
    # Every connection went back to the pool: the ledger still reads and writes.
    assert list(iter_states(ledger))


@pytest.mark.postgres
@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_a_failed_read_raises_where_its_page_would_have_come(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_scenario(ledger, gateway)

    def wrap(fetch: Fetch) -> Fetch:
        calls = 0

        def failing(start: int) -> list[RawEvent]:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise ConnectionError("the server went away")
            return fetch(start)

        return failing

    _wrap_fetch(monkeypatch, wrap)
    seen: list[list[RawEvent]] = []

    with pytest.raises(ConnectionError, match="went away"):
        seen.extend(iter_states(ledger, page_size=2))

    assert [len(page) for page in seen] == [2, 2]
    assert not _read_ahead_threads()


_RUN: contextvars.ContextVar[str] = contextvars.ContextVar("run", default="none")


@pytest.mark.postgres
@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_a_page_read_ahead_is_read_in_the_readers_context(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host's tracing (a span, a request id) kept in context variables covers the reads."""
    run_scenario(ledger, gateway)
    seen: list[tuple[str, str]] = []

    def wrap(fetch: Fetch) -> Fetch:
        def observed(start: int) -> list[RawEvent]:
            seen.append((threading.current_thread().name, _RUN.get()))
            return fetch(start)

        return observed

    _wrap_fetch(monkeypatch, wrap)
    _RUN.set("audit-42")

    pages = list(iter_states(ledger, page_size=2))

    assert len(pages) > 2
    assert len(seen) in (len(pages), len(pages) + 1)  # + the empty page after a full one
    assert any(name.startswith(READ_AHEAD) for name, _ in seen)
    assert {run for _, run in seen} == {"audit-42"}

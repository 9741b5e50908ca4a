"""Many callers release the same event services at once: one transfer each.

These tests race for real (threads, then OS processes) against SQLite files
and PostgreSQL. The gateways count calls without deduplicating, so a ledger
that let two callers through would fail here.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from pathlib import Path

import pytest

from payout_ledger import LedgerSettings, PayoutLedger, ReleaseOutcome
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.race_worker import count_calls, release_all
from tests.support import ALICE, gather_process_results, release

THREADS = 16
PROCESSES = 6
SERVICES = [f"es_race_{i}" for i in range(5)]


def _race(callers: int, run: object) -> list[ReleaseOutcome]:
    barrier = threading.Barrier(callers)
    outcomes: list[ReleaseOutcome] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def caller(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            outcome = run(i)  # type: ignore[operator]
            with lock:
                outcomes.append(outcome)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return outcomes


@pytest.mark.parametrize("latency", [0.0, 0.2], ids=["instant-gateway", "slow-gateway"])
def test_concurrent_releases_create_one_transfer(durable_store_url: str, latency: float) -> None:
    """16 threads sharing one ledger release one service: exactly one Stripe call."""
    gateway = InMemoryTransferGateway(latency=latency)
    with PayoutLedger(
        settings=LedgerSettings(store_url=durable_store_url),
        providers=InMemoryProviderDirectory([ALICE]),
        gateway=gateway,
    ) as ledger:
        outcomes = _race(THREADS, lambda i: ledger.release_payment(release("es_hot")).outcome)

        assert gateway.calls == 1
        assert len(gateway.transfers) == 1
        counts = Counter(outcomes)
        assert counts[ReleaseOutcome.RELEASED] == 1
        assert set(counts) <= {
            ReleaseOutcome.RELEASED,
            ReleaseOutcome.IN_PROGRESS,
            ReleaseOutcome.ALREADY_RELEASED,
        }
        assert sum(counts.values()) == THREADS
        assert len(ledger.history("es_hot")) == 3


def test_concurrent_releases_through_separate_ledgers_create_one_transfer(
    durable_store_url: str,
) -> None:
    """16 threads, each with its own ledger (own connections), one gateway call."""
    gateway = InMemoryTransferGateway(latency=0.05)
    ledgers = [
        PayoutLedger(
            settings=LedgerSettings(store_url=durable_store_url),
            providers=InMemoryProviderDirectory([ALICE]),
            gateway=gateway,
        )
        for _ in range(THREADS)
    ]
    try:
        outcomes = _race(THREADS, lambda i: ledgers[i].release_payment(release("es_hot")).outcome)
    finally:
        for ledger in ledgers:
            ledger.close()

    assert gateway.calls == 1
    assert Counter(outcomes)[ReleaseOutcome.RELEASED] == 1


def test_concurrent_processes_create_one_transfer_per_service(
    durable_store_url: str, tmp_path: Path
) -> None:
    """6 OS processes start on a fresh store and release the same 5 services at once.

    They also race to create the events table: start-up must survive that.
    """
    call_log = tmp_path / "gateway-calls.jsonl"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(PROCESSES)
    with ctx.Pool(PROCESSES) as pool:
        async_results = [
            pool.apply_async(
                release_all,
                (durable_store_url, str(call_log), SERVICES, barrier, 0.02),
            )
            for _ in range(PROCESSES)
        ]
        per_process = gather_process_results(async_results)

    calls = count_calls(call_log)
    assert sorted(c["event_service_id"] for c in calls) == SERVICES
    assert all(c["key"] == f"release_payment:{c['event_service_id']}" for c in calls)
    outcomes = Counter(o for outcomes in per_process for o in outcomes)
    assert outcomes["released"] == len(SERVICES)
    assert sum(outcomes.values()) == PROCESSES * len(SERVICES)

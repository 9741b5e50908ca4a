"""Shared test data and helpers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from multiprocessing.pool import AsyncResult

from payout_ledger import ServiceProvider

ALICE = ServiceProvider(id="prov_alice", user_id="user_alice", stripe_account_id="acct_alice")
BOB_NOT_ONBOARDED = ServiceProvider(id="prov_bob", user_id="user_bob")


def release(
    event_service_id: str,
    provider_id: str = "prov_alice",
    amount: int = 5000,
    currency: str = "usd",
) -> dict[str, object]:
    """A release request as a host would write it."""
    return {
        "event_service_id": event_service_id,
        "provider_id": provider_id,
        "amount": {"amount": amount, "currency": currency},
    }


def gather_process_results(async_results: list[AsyncResult[list[str]]]) -> list[list[str]]:
    """All processes' results; the root cause first if any process failed."""
    values, errors = [], []
    for r in async_results:
        try:
            values.append(r.get(timeout=120))
        except Exception as exc:
            errors.append(exc)
    # A process that died before the barrier breaks it for the others: report it first.
    errors.sort(key=lambda e: isinstance(e, threading.BrokenBarrierError))
    if errors:
        raise errors[0]
    return values


class MovableClock:
    """A ledger clock that stands still until a test moves it."""

    def __init__(self) -> None:
        self.moment = datetime.now(UTC)

    def now(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


class SlowHostClock:
    """A worker host's clock three hours behind the host that claimed; its own
    monotonic clock moves with it."""

    def __init__(self) -> None:
        self.moment = datetime.now(UTC) - timedelta(hours=3)
        self.elapsed = 0.0

    def now(self) -> datetime:
        return self.moment

    def monotonic(self) -> float:
        return self.elapsed

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)
        self.elapsed += seconds

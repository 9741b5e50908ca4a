"""`release_many`: a batch of releases under the shared rate budget, each exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from payout_ledger import LedgerSettings, PayoutLedger, ServiceProvider
from payout_ledger.domain.payout import PayoutStatus
from payout_ledger.errors import BulkRequestError, ProviderNotFoundError
from payout_ledger.service.bulk import BulkItemResult
from payout_ledger.service.governor import RateGovernor
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing import InMemoryProviderDirectory
from payout_ledger.testing.fake_stripe import FakeStripe, faults
from tests.operations.bulk_workers import batch

ROOT = Path(__file__).resolve().parents[2]
TRANSFERS = "/v1/transfers"


@pytest.fixture
def make(fake: FakeStripe, account: str) -> Iterator[Any]:
    made: list[PayoutLedger] = []

    def build(store_url: str = "memory://", clock: Any = None, **overrides: Any) -> PayoutLedger:
        settings = LedgerSettings(
            store_url=store_url,
            stripe_api_key=fake.api_key,
            stripe_api_base=fake.url,
            **{"stripe_max_network_retries": 0, "bulk_rate_limit": 1000, **overrides},
        )
        ledger = PayoutLedger(
            settings=settings,
            providers=InMemoryProviderDirectory(
                [ServiceProvider(id="prov_alice", user_id="user_alice", stripe_account_id=account)]
            ),
            gateway=StripeTransferGateway.from_settings(settings),
            clock=clock,
        )
        made.append(ledger)
        return ledger

    yield build
    for ledger in made:
        ledger.close()


def _posts(fake: FakeStripe) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST" and r.path == TRANSFERS]


def _paid_twice(fake: FakeStripe) -> list[str]:
    payouts = Counter(t["metadata"]["payout_id"] for t in fake.transfers())
    return [p for p, n in payouts.items() if n > 1]


def test_a_batch_is_released_in_input_order_and_a_rerun_pays_nobody_twice(
    make: Any, fake: FakeStripe
) -> None:
    ledger = make()
    seen: list[BulkItemResult] = []
    report = ledger.release_many(batch(12), concurrency=3, on_result=seen.append)

    assert [item.event_service_id for item in report.items] == [f"es_{n}" for n in range(12)]
    assert [item.index for item in report.items] == list(range(12))
    assert report.counts == {"released": 12}
    assert report.all_released
    assert sorted(i.index for i in seen) == list(range(12))
    assert report.governor is not None and report.governor["tokens"] == 12
    assert len(fake.transfers()) == 12

    again = ledger.release_many(batch(12), concurrency=3)
    assert again.counts == {"already_released": 12}
    assert again.all_released
    assert len(fake.transfers()) == 12 and len(_posts(fake)) == 12
    assert again.summary()["released"] == 12


def test_a_bad_item_refuses_the_batch_before_anything_is_recorded(
    make: Any, fake: FakeStripe
) -> None:
    ledger = make()
    items = batch(3)
    items[1] = {**items[1], "amount": {"amount": 1.5, "currency": "usd"}}
    items.append(dict(items[0]))  # es_0 twice
    with pytest.raises(BulkRequestError) as raised:
        ledger.release_many(items)
    assert [index for index, _ in raised.value.problems] == [1, 3]
    assert "item 3" in str(raised.value) and "es_0" in str(raised.value)
    assert ledger.find_payout("es_0") is None
    assert _posts(fake) == []
    with pytest.raises(BulkRequestError):
        ledger.release_many(["not a request"])  # type: ignore[list-item]


def test_an_item_the_ledger_refuses_is_answered_and_the_others_go_on(
    make: Any, fake: FakeStripe
) -> None:
    ledger = make()
    items = batch(3)
    items[1] = {**items[1], "provider_id": "prov_unknown"}
    report = ledger.release_many(items)
    assert [item.outcome for item in report.items] == ["released", "rejected", "released"]
    assert isinstance(report.items[1].error, ProviderNotFoundError)
    assert not report.all_released
    assert report.counts == {"released": 2, "rejected": 1}


def test_a_429_blocks_the_budget_for_its_retry_after_then_the_same_key_is_sent(
    make: Any, fake: FakeStripe
) -> None:
    ledger = make()
    fake.inject(faults.rate_limited(retry_after=1))
    report = ledger.release_many(batch(2), concurrency=1)

    assert report.counts == {"released": 2}
    posts = _posts(fake)
    assert [r.status for r in posts] == [429, 200, 200]
    assert posts[0].idempotency_key == posts[1].idempotency_key
    # Nothing at all was sent during the back-off, by any item.
    assert posts[1].received_at - posts[0].received_at >= 0.95
    assert report.governor is not None
    assert (report.governor["rate_limited"], report.governor["backoff_seconds"]) == (1, 1)
    assert _paid_twice(fake) == []


def test_should_retry_false_leaves_the_payout_in_flight_not_executed(
    make: Any, fake: FakeStripe
) -> None:
    ledger = make()
    fake.inject(faults.rate_limited(retry_after=0, should_retry=False))
    report = ledger.release_many(batch(1))

    assert report.counts == {"not_executed": 1}
    assert len(_posts(fake)) == 1
    assert [r for r in fake.requests if r.method == "GET"] == []  # not resumed either
    assert ledger.get_payout("es_0").status is PayoutStatus.IN_FLIGHT
    assert ledger.resume("es_0").success  # an operator's resume settles it


def test_the_sdks_retry_of_a_429_and_the_governors_do_not_double_up(
    make: Any, fake: FakeStripe
) -> None:
    """Stripe-Should-Retry: true makes the SDK retry a 429 itself; governed, only the
    governor retries: 1 + bulk_rate_limit_retries requests, not that times the SDK's."""
    ledger = make(stripe_max_network_retries=2, bulk_rate_limit_retries=1, bulk_resume_rounds=0)
    fake.inject(faults.rate_limited(retry_after=0, should_retry=True), times=None)
    report = ledger.release_many(batch(1))
    assert report.counts == {"not_executed": 1}
    assert len(_posts(fake)) == 2


def test_a_release_left_not_executed_is_resumed_after_the_backoff(
    make: Any, fake: FakeStripe
) -> None:
    ledger = make(bulk_rate_limit_retries=0, bulk_resume_rounds=2)
    fake.inject(faults.rate_limited(retry_after=0), times=2)
    report = ledger.release_many(batch(1))

    assert report.counts == {"released": 1}
    assert report.items[0].result is not None
    assert report.items[0].result.detail == "retried with the same key"
    assert [r.status for r in _posts(fake)] == [429, 429, 200]
    assert len({r.idempotency_key for r in _posts(fake)}) == 1
    assert len(fake.transfers()) == 1


class _Clock:
    """A clock whose time moves only when the test says."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> datetime:
        return datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=self.offset)

    def monotonic(self) -> float:
        return 1000.0 + self.offset


def test_a_retry_after_the_send_window_closed_is_not_sent(
    make: Any, fake: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    ledger = make(clock=clock, stripe_idempotency_window=60)
    backoff = RateGovernor.backoff

    def long_backoff(self: RateGovernor, headers: Any, retry: int) -> float:
        clock.offset += 120  # the back-off outlasted the attempt's window
        return backoff(self, {"Retry-After": "0"}, retry)

    monkeypatch.setattr(RateGovernor, "backoff", long_backoff)
    fake.inject(faults.rate_limited())
    report = ledger.release_many(batch(1))

    assert report.counts == {"outcome_unknown": 1}
    assert report.items[0].result is not None
    assert report.items[0].result.error_code == "send_window_closed"
    assert len(_posts(fake)) == 1
    assert ledger.get_payout("es_0").status is PayoutStatus.IN_FLIGHT


def test_ungoverned_a_429_is_answered_not_executed(make: Any, fake: FakeStripe) -> None:
    ledger = make()
    fake.inject(faults.rate_limited(retry_after=0))
    report = ledger.release_many(batch(2), governed=False, concurrency=1)
    assert [i.outcome for i in report.items] == ["not_executed", "released"]
    assert report.governor is None


def test_the_async_variant_releases_in_order_under_the_budget(make: Any, fake: FakeStripe) -> None:
    ledger = make()
    fake.inject(faults.rate_limited(retry_after=0))
    seen: list[str] = []

    async def note(item: BulkItemResult) -> None:
        seen.append(item.event_service_id)

    report = asyncio.run(ledger.release_many_async(batch(6), concurrency=3, on_result=note))

    assert [i.event_service_id for i in report.items] == [f"es_{n}" for n in range(6)]
    assert report.counts == {"released": 6}
    assert sorted(seen) == sorted(f"es_{n}" for n in range(6))
    assert report.governor is not None and report.governor["rate_limited"] == 1
    assert len(fake.transfers()) == 6
    again = asyncio.run(ledger.release_many_async(batch(6)))
    assert again.counts == {"already_released": 6}


def test_a_batch_killed_midway_then_run_again_pays_everyone_once(
    durable_store_url: str, make: Any, fake: FakeStripe, account: str
) -> None:
    make(durable_store_url).close()  # the store, before the worker opens it
    fake.inject(faults.latency(0.1), times=None)
    count = 16
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.operations.bulk_workers",
            durable_store_url,
            fake.url,
            fake.api_key,
            account,
            str(count),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while len(fake.transfers()) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        # Kill it while its requests are out: claims without an outcome are left behind.
        while not [r for r in _posts(fake) if r.status is None] and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    fake.clear_faults()
    # The dead worker's last requests end at the fake (and free their keys), as they
    # would at Stripe before anyone runs the batch again.
    while [r for r in fake.requests if r.status is None and not r.dropped]:
        time.sleep(0.01)
    paid_before = len(fake.transfers())
    assert 4 <= paid_before < count

    ledger = make(durable_store_url)
    report = ledger.release_many(batch(count), concurrency=2)

    assert report.all_released, report.counts
    assert report.counts["already_released"] >= 4
    # What the kill left in flight was settled by a resume (Stripe asked first).
    details = {item.result.detail for item in report.items if item.result is not None}
    assert details & {"found at Stripe", "retried with the same key"}
    assert len(fake.transfers()) == count
    assert _paid_twice(fake) == []
    assert ledger.in_flight() == []


class _BrokenDirectory:
    """A host directory that fails (its database is down) for one provider."""

    def get_provider(self, provider_id: str) -> ServiceProvider | None:
        raise RuntimeError("the host's directory is down")


def test_an_error_that_is_not_one_items_stops_the_batch(fake: FakeStripe) -> None:
    with PayoutLedger(
        settings=LedgerSettings(
            store_url="memory://", stripe_api_key=fake.api_key, stripe_api_base=fake.url
        ),
        providers=_BrokenDirectory(),
        gateway=StripeTransferGateway(fake.api_key, api_base=fake.url),
    ) as ledger:
        with pytest.raises(RuntimeError, match="directory is down"):
            ledger.release_many(batch(5), concurrency=2)
        with pytest.raises(RuntimeError, match="directory is down"):
            asyncio.run(ledger.release_many_async(batch(5), concurrency=2))
    assert _posts(fake) == []

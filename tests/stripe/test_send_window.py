"""No request reaches Stripe once its idempotency key may have been pruned.

Every HTTP try, the SDK's own retries included, first checks the attempt's send
window, and the settings refuse a window that, with one request's timeout,
reaches past 23 hours (the trial's scenario is in test_resume_during_retries.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payout_ledger import (
    ConfigurationError,
    LedgerSettings,
    SendWindowClosed,
    TransferOutcomeUnknown,
    TransferRequest,
    TransferResult,
)
from payout_ledger.service.ports import SendWindow, check_send_window, sending_within
from payout_ledger.settings import MAX_STRIPE_TIMEOUT, STRIPE_KEY_RETENTION
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing.fake_stripe import FakeStripe, faults
from tests.stripe.stripe_support import (
    transfer_posts,
)

ES = "es_window"
WINDOW = 60


class FakeTime:
    """Seconds that move only when a test moves them: both hosts' monotonic clocks."""

    def __init__(self, fake: FakeStripe) -> None:
        self.fake = fake

    def monotonic(self) -> float:
        return self.fake.clock.now()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.fake.clock.now(), UTC)


# -- settings -----------------------------------------------------------------------


@given(
    window=st.integers(min_value=-10, max_value=STRIPE_KEY_RETENTION + 10),
    timeout=st.floats(min_value=0.001, max_value=MAX_STRIPE_TIMEOUT + 10, allow_nan=False),
    retries=st.integers(min_value=0, max_value=5),
)
def test_every_accepted_setting_ends_each_request_before_a_key_can_be_pruned(
    window: int, timeout: float, retries: int
) -> None:
    """The whole accepted space: a try starts inside the window and lasts one timeout."""
    try:
        settings = LedgerSettings(
            store_url="memory://",
            stripe_idempotency_window=window,
            stripe_timeout=timeout,
            stripe_max_network_retries=retries,
        )
    except ConfigurationError:
        return
    latest_request_at_stripe = settings.stripe_idempotency_window + settings.stripe_timeout
    assert latest_request_at_stripe <= STRIPE_KEY_RETENTION - 3600


def test_a_window_that_reaches_past_23_hours_with_its_timeout_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="must not exceed 82800 s"):
        LedgerSettings(
            store_url="memory://", stripe_idempotency_window=23 * 3600, stripe_timeout=30
        )


# -- the gateway checks before every try ------------------------------------------


@pytest.fixture
def gateway_with_retries(fake: FakeStripe) -> StripeTransferGateway:
    return StripeTransferGateway(fake.api_key, api_base=fake.url, timeout=5, max_network_retries=2)


def _request(account: str) -> TransferRequest:
    return TransferRequest(
        amount=5000,
        currency="usd",
        destination=account,
        idempotency_key=f"release_payment:{ES}",
        transfer_group=f"event_service:{ES}",
        metadata={"event_service_id": ES},
    )


def _closing_window() -> SendWindow:
    """Open for the first try; closed when the SDK's retry comes round."""
    readings: Iterator[float] = iter([10.0, 70.0, 80.0, 90.0])
    return SendWindow(opened=0.0, seconds=WINDOW, monotonic=lambda: next(readings))


def test_the_sdks_own_retry_is_not_sent_once_the_window_has_closed(
    fake: FakeStripe, account: str, gateway_with_retries: StripeTransferGateway
) -> None:
    fake.inject(faults.drop_before_commit(), method="POST", path="/v1/transfers")

    with sending_within(_closing_window()), pytest.raises(SendWindowClosed) as raised:
        gateway_with_retries.create_transfer(_request(account))

    assert raised.value.code == "send_window_closed"
    assert isinstance(raised.value, TransferOutcomeUnknown)
    assert len(transfer_posts(fake)) == 1  # the first try only


def test_the_async_transport_checks_the_window_before_every_try_too(
    fake: FakeStripe, account: str, gateway_with_retries: StripeTransferGateway
) -> None:
    fake.inject(faults.drop_before_commit(), method="POST", path="/v1/transfers")

    async def call() -> TransferResult:
        with sending_within(_closing_window()):
            return await gateway_with_retries.create_transfer_async(_request(account))

    with pytest.raises(SendWindowClosed):
        asyncio.run(call())
    assert len(transfer_posts(fake)) == 1


def test_outside_a_ledger_call_there_is_no_window_to_check() -> None:
    check_send_window()  # does nothing


# -- a host suspended between its claim and its request ------------------------------


class SuspendedHost:
    """A host that was suspended: its wall clock moved on, a monotonic clock that
    does not count suspended time (Linux CLOCK_MONOTONIC) did not."""

    def __init__(self, fake: FakeStripe) -> None:
        self.fake = fake
        self.frozen = fake.clock.now()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.fake.clock.now(), UTC)

    def monotonic(self) -> float:
        return self.frozen


def test_a_claimant_suspended_for_a_day_sends_nothing_when_it_wakes(
    durable_store_url: str, make_stripe_ledger: Any, fake: FakeStripe, account: str
) -> None:
    """A resume paid meanwhile, the key was pruned: the waking claimant's window is closed."""
    from tests.stripe.stripe_support import release_request, transfers_for

    resumer = make_stripe_ledger(durable_store_url)

    class SuspendsBeforeSending(StripeTransferGateway):
        def create_transfer(self, request: TransferRequest) -> TransferResult:
            fake.clock.advance(120)
            assert resumer.resume_in_flight()[0].success  # the operator's cron, 2 minutes on
            fake.clock.advance(25 * 3600)  # the claimant's host stays suspended
            return super().create_transfer(request)

    claimant = make_stripe_ledger(
        durable_store_url,
        gateway=SuspendsBeforeSending(fake.api_key, api_base=fake.url, max_network_retries=0),
        clock=SuspendedHost(fake),
    )

    result = claimant.release_payment(release_request("es_1"))

    assert len(transfers_for(fake, "es_1")) == 1
    assert result.success and result.detail == "settled meanwhile", result


def test_the_system_clock_counts_time_the_machine_spends_suspended() -> None:
    import time

    from payout_ledger.service.ports import SystemClock, elapsed_seconds

    if hasattr(time, "CLOCK_BOOTTIME"):  # Linux: the clock that keeps counting
        boottime = time.clock_gettime(time.CLOCK_BOOTTIME)
        assert abs(elapsed_seconds() - boottime) < 1.0
    assert SystemClock().monotonic() <= elapsed_seconds()

"""Injected faults: dropped connections, latency, errors, and rule matching."""

from __future__ import annotations

import time

import pytest
import stripe

from payout_ledger.testing.fake_stripe import FakeStripe, faults


@pytest.fixture
def destination(client: stripe.StripeClient) -> str:
    return client.v1.accounts.create({"type": "express"}).id


def transfer(client: stripe.StripeClient, destination: str, key: str) -> stripe.Transfer:
    return client.v1.transfers.create(
        {"amount": 300, "currency": "usd", "destination": destination},
        options={"idempotency_key": key},
    )


def wait_until_handled(fake: FakeStripe, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [r for r in fake.requests if r.status is not None or r.dropped]
        if len(done) >= count:
            return
        time.sleep(0.01)
    raise AssertionError("the fake did not finish the requests in time")


def test_drop_before_commit_loses_the_request_and_executes_nothing(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """The SDK sees APIConnectionError, no transfer exists, the retry runs fresh."""
    fake.inject(faults.drop_before_commit())
    with pytest.raises(stripe.APIConnectionError):
        transfer(client, destination, "key-drop")
    assert fake.transfers() == []
    assert fake.balance("usd") == 10**9
    assert fake.requests[-1].dropped is True
    retried = transfer(client, destination, "key-drop")
    assert retried.last_response is not None
    assert "Idempotent-Replayed" not in retried.last_response.headers
    assert [t["id"] for t in fake.transfers()] == [retried.id]


def test_drop_after_commit_keeps_the_transfer_and_the_retry_replays_it(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """The transfer is committed despite APIConnectionError; the key replays it."""
    fake.inject(faults.drop_after_commit())
    with pytest.raises(stripe.APIConnectionError):
        transfer(client, destination, "key-lost")
    committed = fake.transfers()
    assert len(committed) == 1
    assert fake.balance("usd") == 10**9 - 300
    retried = transfer(client, destination, "key-lost")
    assert retried.id == committed[0]["id"]
    assert retried.last_response is not None
    assert retried.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(fake.transfers()) == 1
    assert fake.counters["dropped_connections"] == 1


def test_latency_delays_the_response(client: stripe.StripeClient, fake: FakeStripe) -> None:
    """A latency fault holds the matching request for the given time."""
    fake.inject(faults.latency(0.3), method="GET", path="/v1/balance")
    started = time.monotonic()
    client.v1.balance.retrieve()
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    client.v1.balance.retrieve()
    assert time.monotonic() - started < 0.3


def test_a_client_timeout_during_latency_still_commits_the_transfer(
    fake: FakeStripe, destination: str
) -> None:
    """A client that gives up early leaves a committed transfer its key replays."""
    impatient = fake.client(http_client=stripe.RequestsClient(timeout=0.1))
    fake.inject(faults.latency(0.4))
    with pytest.raises(stripe.APIConnectionError):
        transfer(impatient, destination, "key-slow")
    wait_until_handled(fake, count=2)
    [committed] = fake.transfers()
    assert transfer(fake.client(), destination, "key-slow").id == committed["id"]


def test_a_fault_hits_only_matching_requests_the_given_number_of_times(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """method, path (with wildcards) and times decide which requests fail."""
    made = transfer(client, destination, "key-a")
    rule = fake.inject(
        faults.server_error(), method="POST", path="/v1/transfers/*/reversals", times=2
    )
    transfer(client, destination, "key-b")  # not a reversal: unaffected
    client.v1.balance.retrieve()
    for _ in range(2):
        with pytest.raises(stripe.APIError):
            client.v1.transfers.reversals.create(made.id, {"amount": 1})
    assert (rule.triggered, rule.remaining) == (2, 0)
    assert client.v1.transfers.reversals.create(made.id, {"amount": 1}).amount == 1
    assert fake.counters["faults_triggered"] == 2


def test_a_cancelled_or_cleared_fault_no_longer_fires(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """cancel() and clear_faults() disarm rules, even unlimited ones."""
    rule = fake.inject(faults.rate_limited(), times=None)
    with pytest.raises(stripe.RateLimitError):
        transfer(client, destination, "key-1")
    rule.cancel()
    transfer(client, destination, "key-2")
    fake.inject(faults.drop_before_commit(), method=None, path=None, times=None)
    fake.clear_faults()
    transfer(client, destination, "key-3")
    assert len(fake.transfers()) == 2


def test_faults_are_recorded_on_the_request_log(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """The log names the fault a request drew and its status."""
    fake.inject(faults.rate_limited())
    with pytest.raises(stripe.RateLimitError):
        transfer(client, destination, "key-1")
    last = fake.requests[-1]
    assert (last.fault, last.status, last.path) == ("RateLimited", 429, "/v1/transfers")


def test_invalid_fault_arguments_are_refused(fake: FakeStripe) -> None:
    """Negative latency and non-positive times are programming errors."""
    with pytest.raises(ValueError, match="negative"):
        faults.latency(-1)
    with pytest.raises(ValueError, match="times"):
        fake.inject(faults.server_error(), times=0)

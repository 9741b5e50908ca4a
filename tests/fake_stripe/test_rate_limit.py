"""The fake's rate limiter: token buckets per endpoint and in all, 429 ``rate_limit`` beyond."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import stripe

from payout_ledger.testing.fake_stripe import FakeStripe, faults
from payout_ledger.testing.fake_stripe._rate_limit import RateLimiter, endpoint_of


@pytest.fixture
def limited() -> Iterator[FakeStripe]:
    with FakeStripe(rate_limit=3) as running:
        yield running


def _transfer(client: stripe.StripeClient, destination: str, key: str) -> stripe.Transfer:
    return client.v1.transfers.create(
        {"amount": 300, "currency": "usd", "destination": destination},
        options={"idempotency_key": key},
    )


def test_requests_beyond_an_endpoints_limit_get_429_rate_limit_and_nothing_runs(
    limited: FakeStripe,
) -> None:
    client = limited.client(max_network_retries=2)
    destination = client.v1.accounts.create({"type": "express"}).id  # another endpoint
    made, refused = [], []
    for n in range(5):
        try:
            made.append(_transfer(client, destination, f"key-{n}").id)
        except stripe.RateLimitError as exc:
            refused.append(exc)

    assert len(made) == 3
    assert len(refused) == 2
    error = refused[0]
    assert error.http_status == 429
    assert error.error is not None and error.error.code == "rate_limit"
    headers = error.headers or {}
    assert headers.get("Stripe-Rate-Limited-Reason") == "endpoint-rate"
    # Stripe documents neither on a rate_limit 429, so the SDK does not retry it.
    assert "Retry-After" not in headers and "Stripe-Should-Retry" not in headers
    assert [t["id"] for t in limited.transfers()] == made
    transfers = [r for r in limited.requests if r.path == "/v1/transfers"]
    assert [r.status for r in transfers] == [200, 200, 200, 429, 429]
    assert limited.counters["rate_limited"] == 2


def test_each_endpoint_has_its_own_bucket_and_ids_share_one(limited: FakeStripe) -> None:
    client = limited.client()
    for _ in range(3):
        client.v1.balance.retrieve()
    with pytest.raises(stripe.RateLimitError):
        client.v1.balance.retrieve()
    account = client.v1.accounts.create({"type": "express"}).id  # POST /v1/accounts: its own
    assert client.v1.accounts.retrieve(account).id == account
    assert endpoint_of("GET", f"/v1/accounts/{account}") == "GET /v1/accounts/{id}"
    assert endpoint_of("POST", "/v1/transfers/tr_1/reversals") == (
        "POST /v1/transfers/{id}/reversals"
    )


def test_the_global_limit_counts_every_endpoint() -> None:
    with FakeStripe(global_rate_limit=2) as fake:
        client = fake.client()
        client.v1.balance.retrieve()
        client.v1.accounts.create({"type": "express"})
        with pytest.raises(stripe.RateLimitError) as raised:
            client.v1.events.list()
    assert (raised.value.headers or {}).get("Stripe-Rate-Limited-Reason") == "global-rate"


def test_retry_after_is_sent_only_when_asked_for() -> None:
    with FakeStripe(rate_limit=1, rate_limit_retry_after=2) as fake:
        client = fake.client()
        client.v1.balance.retrieve()
        with pytest.raises(stripe.RateLimitError) as raised:
            client.v1.balance.retrieve()
    assert (raised.value.headers or {}).get("Retry-After") == "2"


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_holds_one_second_and_refills_at_the_rate() -> None:
    clock = _Clock()
    limiter = RateLimiter(per_endpoint=4, clock=clock)
    admitted = [limiter.admit("POST", "/v1/transfers") for _ in range(6)]
    assert admitted == [None] * 4 + ["endpoint-rate"] * 2
    clock.now += 0.25  # a quarter of a second: one token back
    assert limiter.admit("POST", "/v1/transfers") is None
    assert limiter.admit("POST", "/v1/transfers") == "endpoint-rate"
    clock.now += 60  # never more than one second's worth
    assert [limiter.admit("POST", "/v1/transfers") for _ in range(5)].count(None) == 4


def test_a_refused_request_takes_no_token() -> None:
    clock = _Clock()
    limiter = RateLimiter(per_endpoint=1, total=10, clock=clock)
    assert limiter.admit("GET", "/v1/balance") is None
    for _ in range(20):
        assert limiter.admit("GET", "/v1/balance") == "endpoint-rate"
    assert limiter.admit("GET", "/v1/events") is None  # the global bucket was not drained


@pytest.mark.parametrize("value", [0, -1])
def test_limits_must_be_positive(value: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        FakeStripe(rate_limit=value)


def test_the_rate_limited_fault_can_carry_retry_after_and_should_retry(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    fake.inject(faults.rate_limited(retry_after=1.5, should_retry=False), method="GET", path=None)
    with pytest.raises(stripe.RateLimitError) as raised:
        client.v1.balance.retrieve()
    headers = raised.value.headers or {}
    assert headers.get("Retry-After") == "1.5"
    assert headers.get("Stripe-Should-Retry") == "false"
    assert json.loads(raised.value.http_body or "{}")["error"]["code"] == "rate_limit"
    with pytest.raises(ValueError, match="negative"):
        faults.rate_limited(retry_after=-1)

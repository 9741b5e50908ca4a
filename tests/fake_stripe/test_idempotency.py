"""Stripe API v1 idempotency, exercised through the real SDK."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import stripe

from payout_ledger.testing.fake_stripe import FakeStripe, faults


@pytest.fixture
def destination(client: stripe.StripeClient) -> str:
    return client.v1.accounts.create({"type": "express"}).id


def transfer(
    client: stripe.StripeClient, destination: str, key: str, amount: int = 700
) -> stripe.Transfer:
    params: dict[str, Any] = {
        "amount": amount,
        "currency": "usd",
        "destination": destination,
        "metadata": {"event_service_id": "es-1"},
    }
    return client.v1.transfers.create(params, options={"idempotency_key": key})


def replayed(obj: stripe.StripeObject) -> str | None:
    assert obj.last_response is not None
    return obj.last_response.headers.get("Idempotent-Replayed")


def test_the_same_key_and_params_replay_the_first_response(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """A retry with the same key gets the saved transfer back, marked replayed."""
    first = transfer(client, destination, "key-1")
    second = transfer(client, destination, "key-1")
    assert second.id == first.id
    assert replayed(first) is None
    assert replayed(second) == "true"
    assert first.last_response is not None and second.last_response is not None
    assert second.last_response.headers["Original-Request"] == first.last_response.request_id
    assert len(fake.transfers()) == 1
    assert fake.balance("usd") == 10**9 - 700
    assert [r.replayed for r in fake.requests[-2:]] == [False, True]
    assert fake.requests[-1].idempotency_key == "key-1"
    assert fake.counters["idempotent_replays"] == 1


def test_the_same_key_with_other_params_is_an_idempotency_error(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """Reusing a key with a different amount raises IdempotencyError (400)."""
    transfer(client, destination, "key-1", amount=700)
    with pytest.raises(stripe.IdempotencyError) as caught:
        transfer(client, destination, "key-1", amount=701)
    assert caught.value.http_status == 400
    assert len(fake.transfers()) == 1


def test_the_same_key_on_another_endpoint_is_an_idempotency_error(
    client: stripe.StripeClient, destination: str
) -> None:
    """A key is bound to the endpoint it was first used on."""
    transfer(client, destination, "key-1")
    with pytest.raises(stripe.IdempotencyError):
        client.v1.accounts.create({"type": "express"}, options={"idempotency_key": "key-1"})


def test_a_500_while_executing_is_saved_and_replayed(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """An injected server error is stored: retrying the key replays the 500."""
    fake.inject(faults.server_error())
    with pytest.raises(stripe.APIError) as first:
        transfer(client, destination, "key-500")
    with pytest.raises(stripe.APIError) as second:
        transfer(client, destination, "key-500")
    assert (first.value.http_status, second.value.http_status) == (500, 500)
    assert first.value.headers is not None and second.value.headers is not None
    assert second.value.headers.get("Idempotent-Replayed") == "true"
    assert second.value.headers.get("Stripe-Should-Retry") == "false"
    assert fake.transfers() == []
    assert transfer(client, destination, "key-fresh").amount == 700


def test_a_429_is_not_saved_so_the_retry_executes(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """A rate-limited request is neither executed nor stored."""
    fake.inject(faults.rate_limited())
    with pytest.raises(stripe.RateLimitError) as caught:
        transfer(client, destination, "key-429")
    assert caught.value.http_status == 429
    assert fake.transfers() == []
    retried = transfer(client, destination, "key-429")
    assert replayed(retried) is None
    assert [t["id"] for t in fake.transfers()] == [retried.id]


def test_a_validation_failure_is_not_saved_under_the_key(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """After a 400 for bad params, the same key runs a corrected request."""
    with pytest.raises(stripe.InvalidRequestError):
        transfer(client, destination, "key-v", amount=0)
    fixed = transfer(client, destination, "key-v", amount=5)
    assert replayed(fixed) is None
    assert fixed.amount == 5


def test_an_execution_failure_is_saved_under_the_key(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """A 400 raised while executing (balance_insufficient) replays even once funded."""
    fake.set_balance("usd", 10)
    with pytest.raises(stripe.InvalidRequestError) as first:
        transfer(client, destination, "key-poor")
    fake.set_balance("usd", 10_000)
    with pytest.raises(stripe.InvalidRequestError) as second:
        transfer(client, destination, "key-poor")
    assert first.value.code == second.value.code == "balance_insufficient"
    assert second.value.headers is not None
    assert second.value.headers.get("Idempotent-Replayed") == "true"
    assert fake.transfers() == []


def test_keys_are_pruned_after_24_hours_of_fake_time(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """Within 24 h the key replays; once older, it makes a second transfer."""
    first = transfer(client, destination, "key-day")
    fake.clock.advance(24 * 3600)
    assert transfer(client, destination, "key-day").id == first.id
    fake.clock.advance(1)
    second = transfer(client, destination, "key-day")
    assert second.id != first.id
    assert replayed(second) is None
    assert len(fake.transfers()) == 2


def test_the_pruning_age_is_configurable() -> None:
    """idempotency_key_max_age sets how long keys are kept."""
    with FakeStripe(idempotency_key_max_age=60) as fake:
        client = fake.client()
        account = client.v1.accounts.create({"type": "express"}).id
        first = transfer(client, account, "key-short")
        fake.clock.advance(61)
        assert transfer(client, account, "key-short").id != first.id


def test_keys_longer_than_255_characters_are_refused(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """A 256-character key is a 400; 255 characters are fine."""
    with pytest.raises(stripe.InvalidRequestError) as caught:
        transfer(client, destination, "k" * 256)
    assert caught.value.http_status == 400
    assert fake.transfers() == []
    assert transfer(client, destination, "k" * 255).amount == 700


def test_get_requests_ignore_the_idempotency_key(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """A key sent on GETs neither replays them nor reserves the key."""
    options: Any = {"idempotency_key": "key-get"}
    fake.set_balance("usd", 1000)
    client.v1.balance.retrieve(options=options)
    made = transfer(client, destination, "key-get", amount=100)
    balance = client.v1.balance.retrieve(options=options)
    assert replayed(balance) is None
    assert replayed(made) is None
    assert [b.amount for b in balance.available if b.currency == "usd"] == [900]


def test_keys_are_scoped_per_stripe_account_header(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """A key reused under another Stripe-Account is a different request."""
    made = transfer(client, destination, "key-s")
    with pytest.raises(stripe.IdempotencyError):
        client.v1.transfers.update(
            made.id, {"description": "x"}, options={"idempotency_key": "key-s"}
        )
    other_account: Any = {"idempotency_key": "key-s", "stripe_account": destination}
    client.v1.transfers.update(made.id, {"description": "x"}, options=other_account)
    assert fake.transfers()[0]["description"] == "x"


def test_concurrent_requests_with_one_key_make_exactly_one_transfer(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """While one request holds the key the others get 409; one transfer results."""
    fake.inject(faults.latency(0.6), times=None)
    barrier = threading.Barrier(5)
    results: list[stripe.Transfer | stripe.StripeError] = []
    lock = threading.Lock()

    def post() -> None:
        barrier.wait()
        try:
            outcome: stripe.Transfer | stripe.StripeError = transfer(
                client, destination, "key-race"
            )
        except stripe.StripeError as error:
            outcome = error
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=post) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    successes = [r for r in results if isinstance(r, stripe.Transfer)]
    conflicts = [r for r in results if isinstance(r, stripe.StripeError)]
    assert len(results) == 5
    assert len(fake.transfers()) == 1
    assert {s.id for s in successes} == {fake.transfers()[0]["id"]}
    assert conflicts, "no request saw the key in use"
    for conflict in conflicts:
        assert isinstance(conflict, stripe.APIError)
        assert conflict.http_status == 409
        assert conflict.json_body is not None
        assert conflict.json_body["error"]["type"] == "idempotency_error"
        assert conflict.json_body["error"]["code"] == "idempotency_key_in_use"
    assert fake.counters["idempotency_conflicts"] == len(conflicts)
    fake.clear_faults()
    assert transfer(client, destination, "key-race").id == fake.transfers()[0]["id"]
    assert len(fake.transfers()) == 1

"""Stripe's documented limits on the parameters the fake takes, through the SDK.

Each refusal is a 400 ``invalid_request_error`` naming the parameter, and, as
for every request that fails validation, Stripe executes nothing and keeps
nothing under the idempotency key: the same key then serves another request.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import stripe

from payout_ledger.testing.fake_stripe import FakeStripe

MAX_AMOUNT = 99_999_999
BALANCE = 10**9


@pytest.fixture
def destination(client: stripe.StripeClient) -> str:
    return client.v1.accounts.create({"type": "express"}).id


def transfer(
    client: stripe.StripeClient, destination: str, key: str | None = None, **params: Any
) -> stripe.Transfer:
    body: dict[str, Any] = {"amount": 700, "currency": "usd", "destination": destination}
    body.update(params)
    options: Any = {"idempotency_key": key} if key is not None else {}
    return client.v1.transfers.create(body, options=options)


def refused(call: Callable[[], object]) -> stripe.InvalidRequestError:
    """Run ``call``, which must be refused with a 400, and return the error."""
    with pytest.raises(stripe.InvalidRequestError) as caught:
        call()
    error = caught.value
    assert error.http_status == 400
    assert error.json_body is not None
    assert error.json_body["error"]["type"] == "invalid_request_error"
    assert error.headers.get("Idempotent-Replayed") is None
    return error


def error_of(error: stripe.InvalidRequestError) -> dict[str, Any]:
    assert error.json_body is not None
    body: dict[str, Any] = error.json_body["error"]
    return body


def fresh(obj: stripe.StripeObject) -> bool:
    """Whether ``obj`` came from a request that ran (not an idempotent replay)."""
    assert obj.last_response is not None
    return obj.last_response.headers.get("Idempotent-Replayed") is None


# -- amount -------------------------------------------------------------------


def test_a_transfer_amount_above_eight_digits_is_amount_too_large(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """100000000 is refused with amount_too_large; nothing moves, nothing is kept."""
    events = len(fake.events())
    error = refused(lambda: transfer(client, destination, "key-big", amount=MAX_AMOUNT + 1))
    body = error_of(error)
    assert (error.code, error.param) == ("amount_too_large", "amount")
    assert body["message"].startswith(f"Amount must be no more than {MAX_AMOUNT}")
    assert body["doc_url"].endswith("/amount_too_large")
    assert fake.transfers() == []
    assert fake.balance("usd") == BALANCE
    assert len(fake.events()) == events
    # Nothing was stored under the key: it now serves another request.
    made = transfer(client, destination, "key-big", amount=MAX_AMOUNT)
    assert fresh(made)
    assert made.amount == MAX_AMOUNT
    assert fake.balance("usd") == BALANCE - MAX_AMOUNT


def test_an_amount_of_many_digits_is_too_large_not_a_crash(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """A 30-digit amount is still a 400 amount_too_large."""
    error = refused(lambda: transfer(client, destination, amount=10**30))
    assert (error.code, error.param) == ("amount_too_large", "amount")
    assert fake.transfers() == []


def test_a_reversal_amount_above_eight_digits_is_amount_too_large(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """The limit holds for reversals too, before the remaining amount is looked at."""
    made = transfer(client, destination)
    error = refused(
        lambda: client.v1.transfers.reversals.create(
            made.id, {"amount": MAX_AMOUNT + 1}, options={"idempotency_key": "key-rev"}
        )
    )
    assert (error.code, error.param) == ("amount_too_large", "amount")
    assert fake.transfers()[0]["amount_reversed"] == 0
    reversal = client.v1.transfers.reversals.create(
        made.id, {"amount": 200}, options={"idempotency_key": "key-rev"}
    )
    assert fresh(reversal)
    assert fake.transfers()[0]["amount_reversed"] == 200


# -- metadata -----------------------------------------------------------------


def test_fifty_metadata_keys_are_accepted_and_fifty_one_refused(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """Stripe: at most 50 keys; the message says how many were set."""
    fifty = {f"k{i}": "v" for i in range(50)}
    assert len(transfer(client, destination, metadata=fifty).metadata.to_dict()) == 50
    error = refused(lambda: transfer(client, destination, "key-51", metadata={**fifty, "k50": "v"}))
    assert error.param == "metadata"
    assert error_of(error)["message"].startswith(
        "Metadata can have up to 50 keys, but you've set 51."
    )
    assert len(fake.transfers()) == 1
    assert fresh(transfer(client, destination, "key-51", metadata={"k": "v"}))


def test_an_update_may_not_grow_metadata_past_fifty_keys(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """Keys are counted after the update merges them; unsetting makes room."""
    made = transfer(client, destination, metadata={f"k{i}": "v" for i in range(50)})
    error = refused(lambda: client.v1.transfers.update(made.id, {"metadata": {"new": "v"}}))
    assert error.param == "metadata"
    assert len(fake.transfers()[0]["metadata"]) == 50
    updated = client.v1.transfers.update(made.id, {"metadata": {"k0": "", "new": "v"}})
    assert len(updated.metadata.to_dict()) == 50
    assert "new" in updated.metadata.to_dict()


def test_metadata_keys_longer_than_forty_characters_are_refused(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """A 41-character key is refused (accounts here); 40 characters are fine."""
    long_key = "k" * 41
    error = refused(
        lambda: client.v1.accounts.create(
            {"type": "express", "metadata": {long_key: "v"}},
            options={"idempotency_key": "key-acct"},
        )
    )
    assert error.param == "metadata"
    assert error_of(error)["message"] == (
        f"Invalid key: {long_key} must be a string under 40 characters"
    )
    assert fake.accounts() == []
    account = client.v1.accounts.create(
        {"type": "express", "metadata": {"k" * 40: "v"}},
        options={"idempotency_key": "key-acct"},
    )
    assert fresh(account)
    assert [a["id"] for a in fake.accounts()] == [account.id]


def test_metadata_values_longer_than_five_hundred_characters_are_refused(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """A 501-character value is refused; 500 characters are fine."""
    error = refused(lambda: transfer(client, destination, "key-val", metadata={"note": "v" * 501}))
    assert error.param == "metadata"
    assert error_of(error)["message"] == (
        f"Invalid val: {'v' * 501} must be a string under 500 characters"
    )
    assert fake.transfers() == []
    made = transfer(client, destination, "key-val", metadata={"note": "v" * 500})
    assert fresh(made)
    assert made.metadata["note"] == "v" * 500


@pytest.mark.parametrize("key", ["a[b]", "[a", "a]", "[]"])
def test_metadata_keys_with_square_brackets_are_refused(
    client: stripe.StripeClient, fake: FakeStripe, destination: str, key: str
) -> None:
    """Stripe's metadata keys cannot contain ``[`` or ``]``."""
    error = refused(lambda: transfer(client, destination, "key-br", metadata={key: "v"}))
    assert error.param == "metadata"
    assert error_of(error)["message"].startswith(f"Invalid key: {key} ")
    assert "square brackets" in error_of(error)["message"]
    assert fake.transfers() == []
    assert fresh(transfer(client, destination, "key-br", metadata={"ab": "v"}))


# -- strings ------------------------------------------------------------------


def test_descriptions_longer_than_five_thousand_characters_are_refused(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """description: at most 5000 characters on create, update and reversal."""
    error = refused(lambda: transfer(client, destination, "key-d", description="d" * 5001))
    assert error.param == "description"
    assert "5000" in error_of(error)["message"]
    assert fake.transfers() == []
    made = transfer(client, destination, "key-d", description="d" * 5000)
    assert fresh(made)

    error = refused(lambda: client.v1.transfers.update(made.id, {"description": "e" * 5001}))
    assert error.param == "description"
    assert fake.transfers()[0]["description"] == "d" * 5000

    error = refused(
        lambda: client.v1.transfers.reversals.create(made.id, {"description": "r" * 5001})
    )
    assert error.param == "description"
    assert fake.transfers()[0]["amount_reversed"] == 0


# -- idempotency keys ---------------------------------------------------------


def test_an_idempotency_key_of_256_characters_is_refused_with_stripes_message(
    client: stripe.StripeClient, fake: FakeStripe, destination: str
) -> None:
    """Keys are 1-255 characters: the refusal says so and nothing runs."""
    error = refused(lambda: transfer(client, destination, "k" * 256))
    assert error.param is None
    assert error_of(error)["message"].startswith(
        "Idempotent key length is 256, which is outside accepted lengths. "
        "Idempotent Keys must be 1-255 characters long."
    )
    assert fake.transfers() == []
    assert fake.balance("usd") == BALANCE
    assert fresh(transfer(client, destination, "k" * 255))


def test_an_empty_idempotency_key_is_refused(fake: FakeStripe, destination: str) -> None:
    """An ``Idempotency-Key`` header with no value is a 400, not a request without key."""
    connection = http.client.HTTPConnection(urlsplit(fake.url).netloc, timeout=5)
    try:
        connection.request(
            "POST",
            "/v1/transfers",
            body=f"amount=700&currency=usd&destination={destination}",
            headers={
                "Authorization": f"Bearer {fake.api_key}",
                "Content-Type": "application/x-www-form-urlencoded",
                "Idempotency-Key": "",
            },
        )
        response = connection.getresponse()
        status, body = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("Idempotent key length is 0")
    assert fake.transfers() == []

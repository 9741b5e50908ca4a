"""Connect behaviours of the fake: charge-linked transfers, charges, destinations
that cannot be paid, reversals against the connected account's balance, and API
versions, all through the real SDK."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from payout_ledger.testing.fake_stripe import FakeStripe

CAPABILITY_MESSAGE = (
    "Your destination account needs to have at least one of the following "
    "capabilities enabled: transfers, crypto_transfers, legacy_payments"
)


def new_account(client: stripe.StripeClient, **params: Any) -> str:
    request: Any = {"type": "express", **params}
    return str(client.v1.accounts.create(request).id)


def onboarded(client: stripe.StripeClient) -> str:
    """An account that requested (and so has active) the transfers capability."""
    return new_account(client, capabilities={"transfers": {"requested": True}})


def pay(
    client: stripe.StripeClient,
    destination: str,
    amount: int = 1000,
    *,
    options: Any = None,
    **params: Any,
) -> stripe.Transfer:
    request: Any = {"amount": amount, "currency": "usd", "destination": destination, **params}
    return client.v1.transfers.create(request, options=options)


def key(value: str) -> Any:
    return {"idempotency_key": value}


def replayed(obj: stripe.StripeObject) -> str | None:
    response = obj.last_response
    return None if response is None else response.headers.get("Idempotent-Replayed")


# -- charge-linked transfers ----------------------------------------------------


def test_a_charge_linked_transfer_succeeds_when_the_available_balance_is_short(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """With source_transaction the platform's available balance is neither checked
    nor debited; the same transfer without it is balance_insufficient."""
    intent = fake.succeed_payment_intent(5000, "usd")
    fake.set_balance("usd", 0)
    destination = onboarded(client)
    linked = pay(client, destination, 3000, source_transaction=intent["latest_charge"])
    assert (linked.amount, linked.source_transaction) == (3000, intent["latest_charge"])
    assert fake.balance("usd") == 0
    with pytest.raises(stripe.InvalidRequestError) as caught:
        pay(client, destination, 3000)
    assert (caught.value.http_status, caught.value.code) == (400, "balance_insufficient")
    assert [t["id"] for t in fake.transfers()] == [linked.id]


def test_charge_linked_transfers_may_not_exceed_the_charge(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """Transfers from one charge add up to at most its amount; the currency must match."""
    charge = fake.succeed_payment_intent(1000, "usd")["latest_charge"]
    destination = onboarded(client)
    pay(client, destination, 600, source_transaction=charge)
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        pay(client, destination, 401, source_transaction=charge)
    assert (too_much.value.http_status, too_much.value.param) == (400, "amount")
    assert too_much.value.code is None
    assert charge in str(too_much.value.user_message)
    with pytest.raises(stripe.InvalidRequestError) as currency:
        client.v1.transfers.create(
            {
                "amount": 100,
                "currency": "eur",
                "destination": destination,
                "source_transaction": charge,
            }
        )
    assert currency.value.param == "source_transaction"
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        pay(client, destination, 1, source_transaction="ch_missing")
    assert (unknown.value.code, unknown.value.param) == ("resource_missing", "source_transaction")
    assert pay(client, destination, 400, source_transaction=charge).amount == 400


# -- charges --------------------------------------------------------------------


def test_a_charge_is_retrieved_as_stripe_renders_it(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """GET /v1/charges/{id} renders the succeeded PaymentIntent's charge."""
    intent = fake.succeed_payment_intent(
        2500, "eur", metadata={"booking": "b-7"}, transfer_group="order-7"
    )
    fetched_intent = client.v1.payment_intents.retrieve(intent["id"])
    assert fetched_intent.latest_charge == intent["latest_charge"]
    charge = client.v1.charges.retrieve(intent["latest_charge"])
    assert isinstance(charge, stripe.Charge)
    assert charge.id.startswith("ch_")
    assert charge.object == "charge"
    assert (charge.amount, charge.amount_captured, charge.amount_refunded) == (2500, 2500, 0)
    assert (charge.currency, charge.status) == ("eur", "succeeded")
    assert (charge.paid, charge.captured, charge.refunded) == (True, True, False)
    assert charge.payment_intent == intent["id"]
    assert charge.transfer_group == "order-7"
    assert charge.metadata.to_dict() == {"booking": "b-7"}
    assert charge.created == intent["created"]
    assert charge.livemode is False
    assert charge.balance_transaction is None or str(charge.balance_transaction).startswith("txn_")


def test_an_unknown_charge_is_a_404_resource_missing(client: stripe.StripeClient) -> None:
    """Retrieving a charge that does not exist raises InvalidRequestError 404."""
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.charges.retrieve("ch_missing")
    assert (caught.value.http_status, caught.value.code) == (404, "resource_missing")
    assert caught.value.user_message == "No such charge: 'ch_missing'"


# -- destinations that cannot be paid --------------------------------------------


@pytest.mark.parametrize("status", ["inactive", "pending", "unrequested"])
def test_a_destination_without_an_active_transfers_capability_is_refused(
    client: stripe.StripeClient, fake: FakeStripe, status: str
) -> None:
    """Stripe's insufficient_capabilities_for_transfer, saved under the key."""
    destination = onboarded(client)
    fake.set_capability(destination, "transfers", status)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        pay(client, destination, options=key("cap-1"))
    error = caught.value
    assert (error.http_status, error.code, error.param) == (
        400,
        "insufficient_capabilities_for_transfer",
        "destination",
    )
    assert error.user_message == CAPABILITY_MESSAGE
    body: Any = error.json_body
    assert body["error"]["type"] == "invalid_request_error"
    fake.set_capability(destination, "transfers", "active")
    with pytest.raises(stripe.InvalidRequestError) as again:
        pay(client, destination, options=key("cap-1"))
    assert again.value.code == "insufficient_capabilities_for_transfer"
    assert fake.transfers() == []
    assert pay(client, destination).destination == destination


def test_accounts_created_without_capabilities_can_be_paid(
    client: stripe.StripeClient,
) -> None:
    """The fake's leniency: no requested capabilities means nothing is checked."""
    destination = new_account(client)
    assert client.v1.accounts.retrieve(destination)["capabilities"].to_dict() == {}
    assert pay(client, destination).amount == 1000


def test_set_capability_emits_a_connect_account_updated_event(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """The event carries the account and only the changed capability as previous."""
    destination = onboarded(client)
    fake.set_capability(destination, "transfers", "pending")
    fetched = client.v1.accounts.retrieve(destination)
    assert fetched["capabilities"].to_dict() == {"transfers": "pending"}
    event = fake.events()[-1]
    assert (event["type"], event["account"]) == ("account.updated", destination)
    assert event["data"]["object"]["capabilities"] == {"transfers": "pending"}
    assert event["data"]["previous_attributes"] == {"capabilities": {"transfers": "active"}}
    fake.set_capability(destination, "card_payments", "active")
    assert fake.events()[-1]["data"]["previous_attributes"] == {
        "capabilities": {"card_payments": None}
    }
    fake.set_capability(destination, "card_payments", "unrequested")
    assert "card_payments" not in client.v1.accounts.retrieve(destination)["capabilities"]
    count = len(fake.events())
    fake.set_capability(destination, "transfers", "pending")  # no change, no event
    assert len(fake.events()) == count
    with pytest.raises(ValueError, match="status"):
        fake.set_capability(destination, "transfers", "enabled")
    with pytest.raises(KeyError):
        fake.set_capability("acct_missing", "transfers", "active")


def test_an_account_renders_requirements_and_set_disabled_reason_changes_them(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """requirements.disabled_reason is set and cleared, each with account.updated."""
    destination = new_account(client)
    fetched = client.v1.accounts.retrieve(destination)
    assert fetched.requirements is not None
    assert fetched.requirements.to_dict() == {
        "currently_due": [],
        "eventually_due": [],
        "past_due": [],
        "pending_verification": [],
        "current_deadline": None,
        "disabled_reason": None,
        "errors": [],
    }
    assert (fetched.charges_enabled, fetched.details_submitted) == (True, True)
    fake.set_disabled_reason(destination, "rejected.fraud")
    assert client.v1.accounts.retrieve(destination)["requirements"]["disabled_reason"] == (
        "rejected.fraud"
    )
    event = fake.events()[-1]
    assert (event["type"], event["account"]) == ("account.updated", destination)
    assert event["data"]["object"]["requirements"]["disabled_reason"] == "rejected.fraud"
    assert event["data"]["previous_attributes"] == {"requirements": {"disabled_reason": None}}
    fake.set_disabled_reason(destination, None)
    assert fake.events()[-1]["data"]["previous_attributes"] == {
        "requirements": {"disabled_reason": "rejected.fraud"}
    }
    with pytest.raises(KeyError):
        fake.set_disabled_reason("acct_missing", None)


def test_a_deleted_account_is_gone_and_cannot_be_paid(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """DELETE /v1/accounts/{id}: then GET is resource_missing, transfers 'No such destination'."""
    destination = new_account(client)
    deleted = client.v1.accounts.delete(destination)
    assert deleted.to_dict() == {"id": destination, "object": "account", "deleted": True}
    with pytest.raises(stripe.InvalidRequestError) as fetch:
        client.v1.accounts.retrieve(destination)
    assert (fetch.value.http_status, fetch.value.code) == (404, "resource_missing")
    with pytest.raises(stripe.InvalidRequestError) as transfer:
        pay(client, destination)
    error = transfer.value
    assert (error.http_status, error.code, error.param) == (400, "resource_missing", "destination")
    assert error.user_message == f"No such destination: '{destination}'"
    with pytest.raises(stripe.InvalidRequestError) as twice:
        client.v1.accounts.delete(destination)
    assert twice.value.http_status == 404
    assert destination not in [a["id"] for a in fake.accounts()]


def test_the_delete_account_control_deletes_like_the_endpoint(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """fake.delete_account(id) has the endpoint's effect; unknown ids are KeyError."""
    destination = new_account(client)
    fake.delete_account(destination)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        pay(client, destination)
    assert caught.value.user_message == f"No such destination: '{destination}'"
    with pytest.raises(KeyError):
        fake.delete_account(destination)


def test_an_unknown_destination_gets_stripes_no_such_destination_message(
    client: stripe.StripeClient,
) -> None:
    """The message names the destination as Stripe does."""
    with pytest.raises(stripe.InvalidRequestError) as caught:
        pay(client, "acct_unknown")
    assert caught.value.user_message == "No such destination: 'acct_unknown'"


# -- reversals and the connected account's balance -------------------------------


def test_a_transfer_credits_its_destination_and_a_reversal_debits_it(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """The connected account's available balance follows transfers and reversals."""
    destination = new_account(client)
    transfer = pay(client, destination, 1000)
    assert fake.account_available(destination, "usd") == 1000
    client.v1.transfers.reversals.create(transfer.id, {"amount": 300})
    assert fake.account_available(destination, "usd") == 700
    assert fake.account_available(destination, "eur") == 0
    fake.set_account_balance(destination, "usd", 50)
    assert fake.account_available(destination, "usd") == 50
    with pytest.raises(KeyError):
        fake.account_available("acct_missing", "usd")
    with pytest.raises(ValueError, match="negative"):
        fake.set_account_balance(destination, "usd", -1)


def test_a_reversal_beyond_the_destinations_balance_is_refused_and_saved_under_its_key(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """balance_insufficient, nothing changes, and a retry with the key replays the refusal."""
    destination = new_account(client)
    transfer = pay(client, destination, 1000)
    fake.set_account_balance(destination, "usd", 200)
    platform_before = fake.balance("usd")
    events_before = len(fake.events())
    with pytest.raises(stripe.InvalidRequestError) as first:
        client.v1.transfers.reversals.create(transfer.id, {"amount": 300}, options=key("rev-poor"))
    error = first.value
    assert (error.http_status, error.code) == (400, "balance_insufficient")
    assert error.user_message is not None
    assert "Insufficient funds in the destination account" in error.user_message
    assert fake.account_available(destination, "usd") == 200
    assert fake.balance("usd") == platform_before
    assert fake.transfers()[0]["amount_reversed"] == 0
    assert len(fake.events()) == events_before
    fake.set_account_balance(destination, "usd", 1000)
    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.transfers.reversals.create(transfer.id, {"amount": 300}, options=key("rev-poor"))
    assert again.value.code == "balance_insufficient"
    assert again.value.headers is not None
    assert again.value.headers.get("Idempotent-Replayed") == "true"
    assert fake.transfers()[0]["amount_reversed"] == 0
    assert client.v1.transfers.reversals.create(transfer.id, {"amount": 300}).amount == 300


def test_a_reversal_and_its_transfer_are_rendered_as_stripe_does(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """The reversal's fields, and the transfer's amount_reversed, reversed and reversals."""
    transfer = pay(client, new_account(client), 1000)
    reversal = client.v1.transfers.reversals.create(
        transfer.id, {"amount": 400, "metadata": {"refund": "r-1"}}
    )
    assert reversal.object == "transfer_reversal"
    assert (reversal.amount, reversal.currency, reversal.transfer) == (400, "usd", transfer.id)
    assert reversal["metadata"].to_dict() == {"refund": "r-1"}
    assert isinstance(reversal.created, int)
    assert reversal.destination_payment_refund is not None
    assert str(reversal.destination_payment_refund).startswith("pyr_")
    assert reversal.source_refund is None
    partly = client.v1.transfers.retrieve(transfer.id)
    assert (partly.amount_reversed, partly.reversed) == (400, False)
    rest = client.v1.transfers.reversals.create(transfer.id)
    full = client.v1.transfers.retrieve(transfer.id)
    assert (full.amount_reversed, full.reversed) == (1000, True)
    listed = full.reversals
    assert listed["object"] == "list"
    assert [r.id for r in listed.data] == [rest.id, reversal.id]
    assert listed.has_more is False
    assert listed.url == f"/v1/transfers/{transfer.id}/reversals"
    assert listed["total_count"] == 2


def test_reversals_honour_idempotency_keys(client: stripe.StripeClient, fake: FakeStripe) -> None:
    """Same key and params replay the same reversal; other params are idempotency_error."""
    transfer = pay(client, new_account(client), 1000)
    params: Any = {"amount": 250, "metadata": {"refund": "r-2"}}
    first = client.v1.transfers.reversals.create(transfer.id, params, options=key("rev-k"))
    again = client.v1.transfers.reversals.create(transfer.id, params, options=key("rev-k"))
    assert again.id == first.id
    assert replayed(again) == "true"
    with pytest.raises(stripe.IdempotencyError):
        client.v1.transfers.reversals.create(
            transfer.id, {"amount": 251, "metadata": {"refund": "r-2"}}, options=key("rev-k")
        )
    listed = client.v1.transfers.reversals.list(transfer.id)
    assert [r.id for r in listed.data] == [first.id]
    assert listed.data[0]["metadata"].to_dict() == {"refund": "r-2"}
    assert client.v1.transfers.retrieve(transfer.id).amount_reversed == 250


# -- API versions ------------------------------------------------------------------


def test_events_carry_the_fakes_api_version_until_it_is_changed(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """Events default to the SDK's pinned version; set_event_api_version changes later ones."""
    assert fake.event_api_version == stripe.api_version
    destination = new_account(client)
    pay(client, destination, 100)
    assert fake.events()[-1]["api_version"] == stripe.api_version
    fake.set_event_api_version("2024-06-20")
    assert fake.event_api_version == "2024-06-20"
    pay(client, destination, 100)
    events = fake.events()
    assert [e["api_version"] for e in events[-2:]] == [stripe.api_version, "2024-06-20"]
    assert client.v1.events.retrieve(events[-1]["id"]).api_version == "2024-06-20"


def test_the_constructor_api_version_sets_the_events_version() -> None:
    """FakeStripe(api_version=...) renders every event with that version."""
    with FakeStripe(api_version="2023-10-16") as fake:
        fake.succeed_payment_intent(100, "usd")
        assert {e["api_version"] for e in fake.events()} == {"2023-10-16"}


def test_the_stripe_version_header_is_recorded_on_each_request(fake: FakeStripe) -> None:
    """RecordedRequest.stripe_version holds the header the client sent."""
    fake.client().v1.balance.retrieve()
    assert fake.requests[-1].stripe_version == stripe.api_version
    fake.client(stripe_version="2024-06-20").v1.balance.retrieve()
    assert fake.requests[-1].stripe_version == "2024-06-20"

"""Accounts, transfers, reversals, balance and payment intents, through the SDK."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
import stripe

from payout_ledger.testing.fake_stripe import FakeStripe


def new_account(client: stripe.StripeClient, **params: Any) -> stripe.Account:
    return client.v1.accounts.create({"type": "express", **params})


def pay(
    client: stripe.StripeClient, destination: str, amount: int = 1000, **params: Any
) -> stripe.Transfer:
    return client.v1.transfers.create(
        {"amount": amount, "currency": "usd", "destination": destination, **params}
    )


def raw_get(fake: FakeStripe, path: str, headers: dict[str, str]) -> tuple[int, Any, Any]:
    """GET ``path`` without the SDK: status, headers and decoded JSON body."""
    connection = http.client.HTTPConnection(urlsplit(fake.url).netloc, timeout=5)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.headers, json.loads(response.read())
    finally:
        connection.close()


# -- accounts -----------------------------------------------------------------


def test_an_account_is_created_and_retrieved_with_its_fields(
    client: stripe.StripeClient,
) -> None:
    """A created account comes back from retrieve with its fields and metadata."""
    created = client.v1.accounts.create(
        {
            "type": "express",
            "country": "DE",
            "email": "provider@example.com",
            "metadata": {"provider_id": "p-1"},
        }
    )
    fetched = client.v1.accounts.retrieve(created.id)
    assert isinstance(fetched, stripe.Account)
    assert fetched.id.startswith("acct_")
    assert (fetched.type, fetched.country, fetched.email) == (
        "express",
        "DE",
        "provider@example.com",
    )
    assert fetched.default_currency == "eur"
    assert fetched.metadata.to_dict() == {"provider_id": "p-1"}
    assert fetched.payouts_enabled is True


def test_account_metadata_updates_merge_and_unset_keys(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """Updating metadata merges keys and an empty value removes one."""
    account = new_account(client, metadata={"a": "1", "b": "2"})
    updated = client.v1.accounts.update(account.id, {"metadata": {"b": "", "c": "3"}})
    assert updated.metadata.to_dict() == {"a": "1", "c": "3"}
    event = fake.events()[-1]
    assert event["type"] == "account.updated"
    assert event["account"] == account.id
    assert event["data"]["previous_attributes"] == {"metadata": {"b": "2", "c": None}}


def test_payouts_enabled_is_switched_by_the_test_control(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """set_payouts_enabled changes the account and emits account.updated."""
    account = new_account(client)
    fake.set_payouts_enabled(account.id, False)
    assert client.v1.accounts.retrieve(account.id).payouts_enabled is False
    event = fake.events()[-1]
    assert event["type"] == "account.updated"
    assert event["data"]["object"]["payouts_enabled"] is False
    assert event["data"]["previous_attributes"] == {"payouts_enabled": True}
    with pytest.raises(KeyError):
        fake.set_payouts_enabled("acct_missing", True)


def test_an_unknown_account_is_a_404_resource_missing(
    client: stripe.StripeClient,
) -> None:
    """Retrieving an account that does not exist raises InvalidRequestError 404."""
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.accounts.retrieve("acct_missing")
    assert caught.value.http_status == 404
    assert caught.value.code == "resource_missing"


# -- transfers ----------------------------------------------------------------


def test_a_transfer_is_created_and_retrieved_stripe_shaped(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """A transfer round-trips with Stripe's fields and shows up in fake.transfers()."""
    account = new_account(client)
    created = pay(
        client,
        account.id,
        2500,
        transfer_group="order-7",
        description="payout",
        metadata={"event_service_id": "es-1"},
    )
    fetched = client.v1.transfers.retrieve(created.id)
    assert isinstance(fetched, stripe.Transfer)
    assert fetched.id.startswith("tr_")
    assert (fetched.amount, fetched.currency, fetched.destination) == (
        2500,
        "usd",
        account.id,
    )
    assert fetched.transfer_group == "order-7"
    assert fetched.metadata.to_dict() == {"event_service_id": "es-1"}
    assert (fetched.amount_reversed, fetched.reversed, fetched.livemode) == (
        0,
        False,
        False,
    )
    assert fetched.reversals.data == []
    assert fetched.created == fake.clock.timestamp()
    assert [t["id"] for t in fake.transfers()] == [created.id]


def test_a_transfer_debits_the_available_balance(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """GET /v1/balance shows the available balance less the transfer."""
    fake.set_balance("usd", 5000)
    pay(client, new_account(client).id, 1200)
    balance = client.v1.balance.retrieve()
    usd = [entry for entry in balance.available if entry.currency == "usd"]
    assert [entry.amount for entry in usd] == [3800]
    assert fake.balance("usd") == 3800


def test_a_transfer_beyond_the_balance_is_refused_as_balance_insufficient(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """An over-balance transfer is a 400 balance_insufficient and moves nothing."""
    account = new_account(client)
    fake.set_balance("usd", 100)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        pay(client, account.id, 101)
    assert caught.value.http_status == 400
    assert caught.value.code == "balance_insufficient"
    assert fake.transfers() == []
    assert fake.balance("usd") == 100
    pay(client, account.id, 100)
    assert fake.balance("usd") == 0


def test_a_currency_with_no_balance_cannot_be_transferred(
    client: stripe.StripeClient,
) -> None:
    """A transfer in a currency the platform holds none of is balance_insufficient."""
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.transfers.create(
            {"amount": 1, "currency": "gbp", "destination": new_account(client).id}
        )
    assert caught.value.code == "balance_insufficient"


def test_a_transfer_to_an_unknown_destination_is_a_400(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """The destination must be an existing connected account."""
    with pytest.raises(stripe.InvalidRequestError) as caught:
        pay(client, "acct_doesnotexist")
    assert caught.value.http_status == 400
    assert caught.value.param == "destination"
    assert caught.value.code == "resource_missing"
    assert caught.value.json_body is not None
    assert caught.value.json_body["error"]["type"] == "invalid_request_error"
    assert fake.transfers() == []


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        ({"currency": "usd"}, "amount", "parameter_missing"),
        ({"amount": 0, "currency": "usd"}, "amount", None),
        ({"amount": "12.5", "currency": "usd"}, "amount", "parameter_invalid_integer"),
        ({"amount": 10}, "currency", "parameter_missing"),
        ({"amount": 10, "currency": "dollars"}, "currency", None),
        ({"amount": 10, "currency": "usd", "colour": "red"}, "colour", "parameter_unknown"),
    ],
)
def test_invalid_transfer_parameters_are_refused_with_the_param_named(
    client: stripe.StripeClient,
    fake: FakeStripe,
    params: dict[str, Any],
    param: str,
    code: str | None,
) -> None:
    """Missing, malformed or unknown parameters are a 400 naming the parameter."""
    account = new_account(client)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.transfers.create({"destination": account.id, **params})
    assert caught.value.http_status == 400
    assert (caught.value.param, caught.value.code) == (param, code)
    assert fake.transfers() == []


def test_transfer_metadata_and_description_can_be_updated(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """POST /v1/transfers/{id} updates metadata and emits transfer.updated."""
    transfer = pay(client, new_account(client).id, metadata={"a": "1"})
    updated = client.v1.transfers.update(
        transfer.id, {"metadata": {"b": "2"}, "description": "late note"}
    )
    assert updated.metadata.to_dict() == {"a": "1", "b": "2"}
    assert updated.description == "late note"
    assert fake.events()[-1]["type"] == "transfer.updated"


# -- listing ------------------------------------------------------------------


@pytest.fixture
def five_transfers(
    client: stripe.StripeClient, fake: FakeStripe
) -> tuple[list[str], list[int], str, str]:
    """Five transfers, one per 10 s, alternating destinations and groups."""
    first, second = new_account(client).id, new_account(client).id
    ids, times = [], []
    for index in range(5):
        destination = first if index % 2 == 0 else second
        transfer = pay(client, destination, 100 + index, transfer_group=f"g{index % 2}")
        ids.append(transfer.id)
        times.append(transfer.created)
        fake.clock.advance(10)
    return ids, times, first, second


def listed(client: stripe.StripeClient, **params: Any) -> list[str]:
    return [t.id for t in client.v1.transfers.list(params).data]


def test_transfers_are_listed_newest_first_with_a_default_limit_of_ten(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """The default page is the ten newest transfers, and has_more says so."""
    account = new_account(client).id
    ids = [pay(client, account, 1).id for _ in range(12)]  # all in one second
    page = client.v1.transfers.list()
    assert [t.id for t in page.data] == ids[::-1][:10]
    assert page.has_more is True
    assert page.url == "/v1/transfers"


def test_transfers_are_filtered_by_destination_and_transfer_group(
    client: stripe.StripeClient, five_transfers: tuple[list[str], list[int], str, str]
) -> None:
    """destination and transfer_group filters select exactly the matching transfers."""
    ids, _, first, second = five_transfers
    assert listed(client, destination=first) == [ids[4], ids[2], ids[0]]
    assert listed(client, destination=second) == [ids[3], ids[1]]
    assert listed(client, transfer_group="g1") == [ids[3], ids[1]]
    assert listed(client, transfer_group="g0", destination=second) == []


def test_transfers_are_filtered_by_created_exactly_and_by_range(
    client: stripe.StripeClient, five_transfers: tuple[list[str], list[int], str, str]
) -> None:
    """created filters accept an exact timestamp and gt/gte/lt/lte bounds."""
    ids, times, _, _ = five_transfers
    assert listed(client, created=times[2]) == [ids[2]]
    assert listed(client, created={"gt": times[2]}) == [ids[4], ids[3]]
    assert listed(client, created={"gte": times[2]}) == [ids[4], ids[3], ids[2]]
    assert listed(client, created={"lt": times[1]}) == [ids[0]]
    assert listed(client, created={"lte": times[1]}) == [ids[1], ids[0]]
    assert listed(client, created={"gt": times[0], "lt": times[4]}) == [
        ids[3],
        ids[2],
        ids[1],
    ]


def test_transfers_page_forward_with_starting_after(
    client: stripe.StripeClient, five_transfers: tuple[list[str], list[int], str, str]
) -> None:
    """starting_after pages toward older transfers until has_more is false."""
    ids, _, _, _ = five_transfers
    page1 = client.v1.transfers.list({"limit": 2})
    page2 = client.v1.transfers.list({"limit": 2, "starting_after": page1.data[-1].id})
    page3 = client.v1.transfers.list({"limit": 2, "starting_after": page2.data[-1].id})
    assert [[t.id for t in p.data] for p in (page1, page2, page3)] == [
        [ids[4], ids[3]],
        [ids[2], ids[1]],
        [ids[0]],
    ]
    assert [p.has_more for p in (page1, page2, page3)] == [True, True, False]


def test_transfers_page_backward_with_ending_before(
    client: stripe.StripeClient, five_transfers: tuple[list[str], list[int], str, str]
) -> None:
    """ending_before returns the newer neighbours of the cursor, newest first."""
    ids, _, _, _ = five_transfers
    page = client.v1.transfers.list({"limit": 2, "ending_before": ids[0]})
    assert [t.id for t in page.data] == [ids[2], ids[1]]
    assert page.has_more is True
    last = client.v1.transfers.list({"limit": 2, "ending_before": ids[2]})
    assert [t.id for t in last.data] == [ids[4], ids[3]]
    assert last.has_more is False


def test_auto_paging_walks_every_filtered_transfer_once(
    client: stripe.StripeClient, five_transfers: tuple[list[str], list[int], str, str]
) -> None:
    """The SDK's auto-pagination visits each matching transfer, keeping filters."""
    ids, _, first, _ = five_transfers
    everything = client.v1.transfers.list({"limit": 1}).auto_paging_iter()
    assert [t.id for t in everything] == ids[::-1]
    filtered = client.v1.transfers.list({"limit": 1, "destination": first})
    assert [t.id for t in filtered.auto_paging_iter()] == [ids[4], ids[2], ids[0]]


def test_list_limits_outside_one_to_one_hundred_are_refused(
    client: stripe.StripeClient,
) -> None:
    """limit must be between 1 and 100."""
    for limit in (0, 101):
        with pytest.raises(stripe.InvalidRequestError) as caught:
            client.v1.transfers.list({"limit": limit})
        assert caught.value.param == "limit"
    assert client.v1.transfers.list({"limit": 100}).data == []


def test_an_unknown_pagination_cursor_is_refused(client: stripe.StripeClient) -> None:
    """starting_after must name an existing transfer."""
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.transfers.list({"starting_after": "tr_missing"})
    assert (caught.value.param, caught.value.code) == ("starting_after", "resource_missing")


# -- reversals ----------------------------------------------------------------


def test_partial_reversals_accumulate_until_the_transfer_is_fully_reversed(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """Reversals add up, credit the balance, and the last one defaults to the rest."""
    fake.set_balance("usd", 1000)
    transfer = pay(client, new_account(client).id, 1000)
    first = client.v1.transfers.reversals.create(transfer.id, {"amount": 300})
    assert isinstance(first, stripe.TransferReversal)
    assert (first.amount, first.transfer) == (300, transfer.id)
    after_first = client.v1.transfers.retrieve(transfer.id)
    assert (after_first.amount_reversed, after_first.reversed) == (300, False)
    assert fake.balance("usd") == 300
    rest = client.v1.transfers.reversals.create(transfer.id)
    assert rest.amount == 700
    final = client.v1.transfers.retrieve(transfer.id)
    assert (final.amount_reversed, final.reversed) == (1000, True)
    assert [r.id for r in final.reversals.data] == [rest.id, first.id]
    assert fake.balance("usd") == 1000
    assert [e["type"] for e in fake.events()[-2:]] == [
        "transfer.reversed",
        "transfer.reversed",
    ]


def test_reversing_more_than_remains_is_refused(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """Over-reversal and reversing a fully reversed transfer are 400s."""
    transfer = pay(client, new_account(client).id, 500)
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.transfers.reversals.create(transfer.id, {"amount": 501})
    assert (too_much.value.http_status, too_much.value.param) == (400, "amount")
    client.v1.transfers.reversals.create(transfer.id, {"amount": 500})
    with pytest.raises(stripe.InvalidRequestError) as again:
        client.v1.transfers.reversals.create(transfer.id, {"amount": 1})
    assert again.value.http_status == 400
    assert fake.transfers()[0]["amount_reversed"] == 500


def test_reversals_are_listed_and_retrieved(client: stripe.StripeClient) -> None:
    """GET .../reversals lists newest first and pages; one can be retrieved."""
    transfer = pay(client, new_account(client).id, 900)
    made = [client.v1.transfers.reversals.create(transfer.id, {"amount": 100}).id for _ in range(3)]
    page = client.v1.transfers.reversals.list(transfer.id, {"limit": 2})
    assert [r.id for r in page.data] == [made[2], made[1]]
    assert page.has_more is True
    fetched = client.v1.transfers.reversals.retrieve(transfer.id, made[0])
    assert fetched.amount == 100


# -- payment intents, events, auth, routing -----------------------------------


def test_a_succeeded_payment_intent_funds_transfers_from_its_charge(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """succeed_payment_intent credits the balance; its charge can source transfers."""
    fake.set_balance("eur", 0)
    intent = fake.succeed_payment_intent(5000, "eur", metadata={"booking": "b-1"})
    fetched = client.v1.payment_intents.retrieve(intent["id"])
    assert (fetched.status, fetched.amount_received) == ("succeeded", 5000)
    assert fetched.metadata.to_dict() == {"booking": "b-1"}
    assert fake.balance("eur") == 5000
    assert fake.events()[-1]["type"] == "payment_intent.succeeded"
    account = new_account(client).id
    params = {"currency": "eur", "destination": account}
    source = {"source_transaction": intent["latest_charge"]}
    client.v1.transfers.create({"amount": 4000, **params, **source})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.transfers.create({"amount": 1001, **params, **source})
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.transfers.create({"amount": 1, **params, "source_transaction": "ch_x"})
    assert unknown.value.param == "source_transaction"


def test_events_are_listed_by_type_with_wildcards_and_retrieved(
    client: stripe.StripeClient,
) -> None:
    """GET /v1/events filters by type, transfer.* included, newest first."""
    transfer = pay(client, new_account(client).id, 400)
    client.v1.transfers.reversals.create(transfer.id, {"amount": 100})
    created = client.v1.events.list({"type": "transfer.created"}).data
    assert [e.type for e in created] == ["transfer.created"]
    assert created[0].data.object.id == transfer.id
    assert created[0].request.id is not None
    assert created[0].livemode is False
    both = client.v1.events.list({"type": "transfer.*"}).data
    assert [e.type for e in both] == ["transfer.reversed", "transfer.created"]
    assert both[0].data.object.amount_reversed == 100
    assert client.v1.events.retrieve(created[0].id).id == created[0].id
    listed_types = client.v1.events.list({"types": ["transfer.created", "transfer.reversed"]})
    assert [e.id for e in listed_types.data] == [e.id for e in both]
    first_page = client.v1.events.list({"limit": 1})
    second_page = client.v1.events.list({"limit": 1, "starting_after": first_page.data[0].id})
    assert [e.id for e in first_page.data + second_page.data] == [e.id for e in both]
    assert (first_page.has_more, second_page.has_more) == (True, False)


def test_a_wrong_api_key_is_refused_with_a_401(fake: FakeStripe) -> None:
    """The SDK raises AuthenticationError for a key the fake does not know."""
    with pytest.raises(stripe.AuthenticationError) as caught:
        fake.client(api_key="sk_test_wrong").v1.balance.retrieve()
    assert caught.value.http_status == 401


def test_a_missing_authorization_header_gets_stripes_error_body(fake: FakeStripe) -> None:
    """Without Authorization the reply is a 401 error body with a Request-Id."""
    status, headers, body = raw_get(fake, "/v1/balance", {})
    assert status == 401
    assert body["error"]["type"] == "invalid_request_error"
    assert "API key" in body["error"]["message"]
    assert headers["Request-Id"].startswith("req_")


def test_an_unknown_route_is_a_404_with_a_request_id(fake: FakeStripe) -> None:
    """Unknown URLs get Stripe's 404 resource_missing error."""
    auth = {"Authorization": f"Bearer {fake.api_key}"}
    status, headers, body = raw_get(fake, "/v1/charges_that_do_not_exist", auth)
    assert status == 404
    assert body["error"]["code"] == "resource_missing"
    assert headers["Request-Id"].startswith("req_")


def test_every_request_is_logged_with_its_parsed_parameters(
    client: stripe.StripeClient, fake: FakeStripe
) -> None:
    """fake.requests records method, path, headers and nested parameters."""
    account = new_account(client)
    client.v1.transfers.list({"created": {"gte": 5}, "destination": account.id})
    last = fake.requests[-1]
    assert (last.method, last.path, last.status) == ("GET", "/v1/transfers", 200)
    assert last.params == {"created": {"gte": "5"}, "destination": account.id}
    assert last.headers["authorization"] == f"Bearer {fake.api_key}"
    assert fake.requests[0].idempotency_key is not None  # the SDK sets one on POSTs
    assert fake.counters["requests"] == 2

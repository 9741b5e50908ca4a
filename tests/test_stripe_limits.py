"""What Stripe would refuse is refused before anything is recorded; every refusal is typed.

Stripe's limits (see ``payout_ledger.domain.money``): amounts of at most eight digits
(nine for INR, twelve for IDR), the currencies Stripe supports, metadata values
under 500 characters. A direct ``ReleaseRequest(...)`` or ``ServiceProvider(...)``
raises the library's own errors, and so do the ledger's queries and commands
given ids no request could have.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from payout_ledger import (
    STRIPE_API_VERSION,
    ConfigurationError,
    InvalidMoneyError,
    InvalidRequestError,
    LedgerSettings,
    Money,
    PayoutLedger,
    ReleaseRequest,
    ServiceProvider,
    TransferRequest,
)
from payout_ledger.domain import money
from payout_ledger.domain.money import ISO_4217_CURRENCIES
from payout_ledger.domain.payout import idempotency_key, transfer_group
from payout_ledger.settings import store_environment
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from payout_ledger.testing.fake_stripe import FakeStripe
from payout_ledger.testing.fake_stripe import _params as fake_params
from tests.support import release

STRIPE_MAX_AMOUNT = 99_999_999
"""Stripe's documented maximum: eight digits in the currency's minor unit."""
MAX_METADATA_VALUE_LENGTH = 500

# -- amounts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        (STRIPE_MAX_AMOUNT + 1, "usd"),
        (2**31, "eur"),
        (2**63, "usd"),
        (2**63 - 1, "usd"),
        (10**30, "jpy"),
        (999_999_999 + 1, "inr"),
        (999_999_999_999 + 1, "idr"),
    ],
)
def test_amounts_above_stripes_maximum_are_refused(amount: int, currency: str) -> None:
    """Money(2**63, "usd") and every amount Stripe would refuse raise InvalidMoneyError."""
    with pytest.raises(InvalidMoneyError, match="at most"):
        Money(amount, currency)


@pytest.mark.parametrize(
    ("amount", "currency"),
    [(STRIPE_MAX_AMOUNT, "usd"), (STRIPE_MAX_AMOUNT, "jpy"), (999_999_999, "inr"),
     (999_999_999_999, "idr"), (1, "usd")],
)  # fmt: skip
def test_the_largest_amounts_stripe_takes_are_accepted(amount: int, currency: str) -> None:
    assert Money(amount, currency).amount == amount


def test_the_maximum_is_the_one_the_fake_stripe_enforces() -> None:
    """One limit: the fake Stripe server refuses above the same eight digits."""
    from payout_ledger.service import ports

    assert fake_params.MAX_AMOUNT == money.STRIPE_MAX_AMOUNT == STRIPE_MAX_AMOUNT
    assert money.max_amount("usd") == STRIPE_MAX_AMOUNT
    limit = ports.MAX_METADATA_VALUE_LENGTH
    assert fake_params.MAX_METADATA_VALUE_LENGTH == limit == MAX_METADATA_VALUE_LENGTH


def test_every_accepted_amount_fits_a_postgresql_bigint() -> None:
    """The read model's columns are bigint: nothing Money takes can overflow them."""
    assert all(money.max_amount(c) < 2**63 for c in money.STRIPE_CURRENCIES)


def test_a_release_above_the_maximum_records_nothing(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """The outside trial's claim of 2**63 usd: refused before anything is recorded."""
    with pytest.raises(InvalidMoneyError):
        ledger.release_payment(release("es_huge", amount=2**63))
    with pytest.raises(InvalidMoneyError):
        ledger.release_payment(release("es_huge", amount=STRIPE_MAX_AMOUNT + 1))
    assert gateway.calls == 0
    assert ledger.history("es_huge") == []
    assert ledger.recorder.max_notification_id() in (None, 0)


# -- currencies ----------------------------------------------------------------------


@pytest.mark.parametrize("currency", ["xau", "xdr", "xts", "kpw", "irr", "cup", "syp", "sdg"])
def test_iso_currencies_stripe_does_not_support_are_refused(currency: str) -> None:
    """Active ISO 4217 codes (metals, funds, sanctioned currencies) Stripe does not take."""
    with pytest.raises(InvalidMoneyError, match="currency"):
        Money(100, currency)


@pytest.mark.parametrize("currency", ["usd", "EUR", "gbp", "jpy", "chf", "inr", "idr", "brl"])
def test_common_currencies_are_accepted(currency: str) -> None:
    assert Money(100, currency).currency == currency.lower()


def test_stripes_currencies_are_active_iso_codes() -> None:
    assert money.STRIPE_CURRENCIES <= ISO_4217_CURRENCIES
    assert len(money.STRIPE_CURRENCIES) > 120


# -- metadata and the transfer request -------------------------------------------------


def test_the_longest_ids_keep_metadata_and_keys_within_stripes_limits() -> None:
    """Ids are at most 200 characters: metadata values stay under 500, keys under 255."""
    longest = "x" * 200
    request = TransferRequest(
        amount=STRIPE_MAX_AMOUNT,
        currency="usd",
        destination="acct_1",
        idempotency_key=idempotency_key(longest, 10**6),
        transfer_group=transfer_group(longest),
        metadata={"event_service_id": longest, "payout_id": str(uuid.uuid4()), "attempt": "1"},
    )
    assert all(len(v) <= MAX_METADATA_VALUE_LENGTH for v in request.metadata.values())
    assert len(request.idempotency_key) <= 255


@pytest.mark.parametrize(
    "change",
    [
        {"amount": STRIPE_MAX_AMOUNT + 1},
        {"amount": 0},
        {"amount": True},
        {"currency": "xau"},
        {"destination": "not an account"},
        {"idempotency_key": "k" * 256},
        {"metadata": {"event_service_id": "v" * 501}},
        {"metadata": {"k" * 41: "v"}},
        {"metadata": {"a[b]": "v"}},
        {"metadata": {f"k{i}": "v" for i in range(51)}},
    ],
)
def test_a_transfer_request_stripe_would_refuse_is_refused(change: dict[str, Any]) -> None:
    """TransferRequest enforces Stripe's limits and raises InvalidRequestError."""
    fields: dict[str, Any] = {
        "amount": 5000,
        "currency": "usd",
        "destination": "acct_1",
        "idempotency_key": "release_payment:es_1",
        "transfer_group": "event_service:es_1",
        "metadata": {"event_service_id": "es_1"},
    }
    with pytest.raises(InvalidRequestError):
        TransferRequest(**{**fields, **change})


def test_a_200_character_service_id_is_paid_through_stripe(tmp_path: Any, fake: FakeStripe) -> None:
    """The longest id the ledger accepts reaches the fake Stripe, which enforces the limits."""
    account = str(fake.client().v1.accounts.create({"type": "express"}).id)
    provider = ServiceProvider(id="prov_long", user_id="user_long", stripe_account_id=account)
    gateway = StripeTransferGateway(fake.api_key, api_base=fake.url, timeout=5)
    with PayoutLedger(
        settings=LedgerSettings(store_url=f"sqlite:///{tmp_path / 'p.db'}"),
        providers=InMemoryProviderDirectory([provider]),
        gateway=gateway,
    ) as ledger:
        result = ledger.release_payment(release("e" * 200, "prov_long", amount=STRIPE_MAX_AMOUNT))
    assert result.success, result


# -- direct construction ---------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"event_service_id": "", "provider_id": "p", "amount": {"amount": 1, "currency": "usd"}},
        {"event_service_id": "es\ud800", "provider_id": "p",
         "amount": {"amount": 1, "currency": "usd"}},
        {"event_service_id": "es", "provider_id": "p", "amount": {"amount": 1, "currency": "usd"},
         "extra": 1},
        {"event_service_id": "es", "provider_id": None, "amount": {"amount": 1, "currency": "usd"}},
    ],
)  # fmt: skip
def test_a_bad_release_request_built_directly_raises_invalid_request_error(
    fields: dict[str, Any],
) -> None:
    """README's ReleaseRequest(...) raises the documented error, not pydantic's."""
    with pytest.raises(InvalidRequestError) as caught:
        ReleaseRequest(**fields)
    assert not isinstance(caught.value, InvalidMoneyError)


@pytest.mark.parametrize(
    "amount", [{"amount": 2**63, "currency": "usd"}, {"amount": 1, "currency": "xau"}, 5]
)
def test_bad_money_in_a_release_request_built_directly_is_invalid_money(amount: Any) -> None:
    with pytest.raises(InvalidMoneyError):
        ReleaseRequest(event_service_id="es_1", provider_id="p", amount=amount)


@pytest.mark.parametrize(
    "fields",
    [
        {"id": "", "user_id": "u"},
        {"id": "p", "user_id": "u", "stripe_account_id": "bank_1"},
        {"id": "p\ud800", "user_id": "u"},
        {"id": "p"},
    ],
)
def test_a_bad_service_provider_raises_invalid_request_error(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError):
        ServiceProvider(**fields)


def test_good_requests_and_providers_are_still_built_directly() -> None:
    request = ReleaseRequest(
        event_service_id=42,  # type: ignore[arg-type]
        provider_id="p",
        amount=Money(1, "usd"),
    )
    assert request.event_service_id == "42"
    provider = ServiceProvider(id="p", user_id="u", stripe_account_id="acct_1")
    assert provider.stripe_account_id == "acct_1"


@pytest.mark.parametrize("key", [None, 5, b"sk_test_x", "pk_test_x", ""])
def test_a_gateway_without_a_usable_key_is_a_configuration_error(key: Any) -> None:
    with pytest.raises(ConfigurationError):
        StripeTransferGateway(key)


# -- SQLite URLs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///file:x.db?mode=memory",
        "sqlite:///file:x.db",
        "sqlite:///x.db?mode=ro",
        "sqlite:////tmp/x.db?cache=shared",
        "sqlite:///x.db#frag",
        "sqlite:///file::memory:?cache=shared",
    ],
)
def test_uri_style_sqlite_urls_are_refused(url: str) -> None:
    """They would open a private, empty store per ledger instead of the shared file."""
    with pytest.raises(ConfigurationError, match="SQLite"):
        store_environment(LedgerSettings(store_url=url))


def test_a_plain_sqlite_file_named_like_a_uri_part_is_still_accepted(tmp_path: Any) -> None:
    env = store_environment(LedgerSettings(store_url=f"sqlite:///{tmp_path / 'profile.db'}"))
    assert env["SQLITE_DBNAME"].endswith("profile.db")


# -- ids the ledger's queries and commands are given -----------------------------------


BAD_IDS = ["es_\ud800", "", "has space", "x" * 201, "tab\there", "é"]


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize(
    "call",
    ["find_payout", "get_payout", "history", "resume", "payout_id"],
)
def test_queries_refuse_ids_no_request_could_have(
    ledger: PayoutLedger, call: str, bad: str
) -> None:
    with pytest.raises(InvalidRequestError):
        getattr(ledger, call)(bad)


@pytest.mark.parametrize("bad", ["evt_\ud800", "", "has space", "x" * 256])
def test_stripe_event_ids_are_checked(ledger: PayoutLedger, bad: str) -> None:
    with pytest.raises(InvalidRequestError):
        ledger.has_stripe_event(bad)
    with pytest.raises(InvalidRequestError):
        ledger.captured_payment(bad)
    with pytest.raises(InvalidRequestError):
        ledger.record_stripe_event(
            event={"id": bad, "type": "x.y", "data": {"object": {}}}, raw_body=b"{}", headers={}
        )


def test_a_255_character_stripe_event_id_is_still_taken(ledger: PayoutLedger) -> None:
    """The webhook handler takes ids up to 255 characters; so does the ledger."""
    assert ledger.has_stripe_event("e" * 255) is False


@pytest.mark.parametrize(
    ("event", "raw_body", "headers"),
    [
        ({"id": "evt_1", "type": "x.y", "data": {"object": {}}}, "{}", {}),
        ({"id": "evt_1", "type": "x.y", "data": {"object": {}}}, None, {}),
        ({"id": "evt_1", "type": "x\ud800", "data": {"object": {}}}, b"{}", {}),
        ({"id": "evt_1", "type": "x.y", "data": {"object": {}}}, b"{}", {"a": "\ud800"}),
        ({"id": "evt_1", "type": "x.y", "data": {"object": {}}}, b"{}", {"a": 1}),
        ({"id": "evt_1", "type": "x.y", "account": "acct_\ud800", "data": {"object": {}}},
         b"{}", {}),
        ({"id": "evt_1", "type": "payment_intent.succeeded", "api_version": STRIPE_API_VERSION,
          "data": {"object": {"id": "pi_1", "amount": 1, "currency": "usd",
                              "metadata": {"k": "\ud800"}}}}, b"{}", {}),
    ],
)  # fmt: skip
def test_record_stripe_event_refuses_what_it_cannot_store(
    ledger: PayoutLedger, event: dict[str, Any], raw_body: Any, headers: Any
) -> None:
    """A str body, lone surrogates anywhere: InvalidRequestError, and nothing is recorded."""
    with pytest.raises(InvalidRequestError):
        ledger.record_stripe_event(event=event, raw_body=raw_body, headers=headers)
    assert not ledger.has_stripe_event("evt_1")

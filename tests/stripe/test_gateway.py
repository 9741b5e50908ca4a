"""The ledger on the real Stripe gateway, through the stripe SDK over HTTP to FakeStripe.

What reaches Stripe (the idempotency header, the transfer's parameters) and
how each of Stripe's answers becomes a release outcome and a recorded event.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest

from payout_ledger import ConfigurationError, PayoutLedger, PayoutStatus, ReleaseOutcome
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing.fake_stripe import FakeStripe, faults
from tests.stripe.stripe_support import (
    AMOUNT,
    CURRENCY,
    LedgerMaker,
    release_request,
    topics,
    transfer_posts,
    transfers_for,
    wait_for,
)

WRONG_KEY = "sk_test_WRONGsecret0123456789abcdefQRST"
SECRET_PART = WRONG_KEY.removeprefix("sk_test_")


@pytest.fixture
def ledger(make_stripe_ledger: LedgerMaker, sqlite_url: str) -> PayoutLedger:
    return make_stripe_ledger(sqlite_url)


def assert_left_in_flight(ledger: PayoutLedger, fake: FakeStripe, event_service_id: str) -> None:
    """Nothing but the claim is recorded, and a new release does not call Stripe."""
    assert topics(ledger, event_service_id) == ["PayoutStarted"]
    assert ledger.get_payout(event_service_id).status is PayoutStatus.IN_FLIGHT
    assert ledger.in_flight() == [event_service_id]
    posts = len(transfer_posts(fake))
    again = ledger.release_payment(release_request(event_service_id))
    assert again.outcome is ReleaseOutcome.IN_PROGRESS
    assert len(transfer_posts(fake)) == posts


# What reaches Stripe.


def test_the_idempotency_key_reaches_stripe_as_the_header_and_not_as_a_form_field(
    ledger: PayoutLedger, fake: FakeStripe
) -> None:
    """The first attempt's Idempotency-Key header is exactly release_payment:{id}."""
    result = ledger.release_payment(release_request("es_header"))

    assert result.outcome is ReleaseOutcome.RELEASED
    [post] = transfer_posts(fake)
    assert post.headers["Idempotency-Key"] == "release_payment:es_header"
    assert not any("idempotency" in name.lower() for name in post.params)
    assert result.idempotency_key == "release_payment:es_header"


def test_after_a_decline_the_next_release_sends_the_attempt_2_key(
    ledger: PayoutLedger, fake: FakeStripe
) -> None:
    """Stripe caches the refusal under key 1, so the retry sends attempt 2's own key."""
    fake.set_balance(CURRENCY, 0)
    declined = ledger.release_payment(release_request("es_retry"))
    assert declined.outcome is ReleaseOutcome.FAILED
    fake.set_balance(CURRENCY, 10**9)

    retried = ledger.release_payment(release_request("es_retry"))

    assert retried.outcome is ReleaseOutcome.RELEASED
    keys = [r.headers["Idempotency-Key"] for r in transfer_posts(fake)]
    assert keys == ["release_payment:es_retry", "release_payment.attempt2:es_retry"]
    assert all(not r.replayed for r in transfer_posts(fake))
    [transfer] = transfers_for(fake, "es_retry")
    assert transfer["id"] == retried.transfer_id
    assert transfer["metadata"]["attempt"] == "2"


def test_the_transfer_at_stripe_has_the_amount_destination_group_and_metadata(
    ledger: PayoutLedger, fake: FakeStripe, account: str
) -> None:
    """Amount, currency, the provider's account, event_service:{id} and the ledger's ids."""
    result = ledger.release_payment(release_request("es_params"))

    [transfer] = fake.transfers()
    assert transfer["id"] == result.transfer_id
    assert transfer["amount"] == AMOUNT
    assert transfer["currency"] == CURRENCY
    assert transfer["destination"] == account
    assert transfer["transfer_group"] == "event_service:es_params"
    assert transfer["metadata"] == {
        "event_service_id": "es_params",
        "payout_id": str(PayoutLedger.payout_id("es_params")),
        "attempt": "1",
    }
    assert ledger.get_payout("es_params").transfer_id == transfer["id"]


# Stripe's answers, one by one.


def test_insufficient_balance_is_a_recorded_failure_with_stripes_code_and_request_id(
    ledger: PayoutLedger, fake: FakeStripe
) -> None:
    """A 400 balance_insufficient is FAILED, with a req_ id, and TransferFailed is saved."""
    fake.set_balance(CURRENCY, 0)

    result = ledger.release_payment(release_request("es_poor"))

    assert result.outcome is ReleaseOutcome.FAILED
    assert result.error_code == "balance_insufficient"
    assert result.stripe_request_id is not None
    assert result.stripe_request_id.startswith("req_")
    assert result.stripe_request_id == transfer_posts(fake)[0].request_id
    assert topics(ledger, "es_poor") == ["PayoutStarted", "TransferFailed"]
    failed = ledger.history("es_poor")[-1]
    assert failed.failure_code == "balance_insufficient"  # type: ignore[attr-defined]
    assert failed.stripe_request_id == result.stripe_request_id  # type: ignore[attr-defined]
    assert ledger.get_payout("es_poor").status is PayoutStatus.FAILED
    assert ledger.in_flight() == []
    assert fake.transfers() == []


def test_an_unknown_destination_account_is_a_recorded_failure(
    make_stripe_ledger: LedgerMaker, sqlite_url: str, fake: FakeStripe
) -> None:
    """A provider whose connected account Stripe does not know ("No such destination"):
    the refusal is recorded, nothing moved, and the provider must act."""
    ledger = make_stripe_ledger(sqlite_url, account_id="acct_doesnotexist")

    result = ledger.release_payment(release_request("es_nowhere"))

    assert result.outcome is ReleaseOutcome.PROVIDER_ACTION_REQUIRED
    assert result.error_code == "no_such_destination"
    assert result.stripe_request_id is not None
    assert topics(ledger, "es_nowhere") == ["PayoutStarted", "TransferFailed"]
    assert ledger.get_payout("es_nowhere").failure_code == "resource_missing"
    assert ledger.in_flight() == []
    assert fake.transfers() == []


def test_a_wrong_api_key_fails_without_the_key_in_the_result_or_any_log(
    make_stripe_ledger: LedgerMaker,
    sqlite_url: str,
    fake: FakeStripe,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 401 is a definite refusal (FAILED); the key shows up nowhere but the header."""
    monkeypatch.setattr("stripe.log", "debug")  # the SDK also prints to stderr
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
    gateway = StripeTransferGateway(WRONG_KEY, api_base=fake.url, timeout=10, max_network_retries=0)
    ledger = make_stripe_ledger(sqlite_url, gateway=gateway)

    result = ledger.release_payment(release_request("es_badkey"))

    assert result.outcome is ReleaseOutcome.FAILED
    assert result.error_message is not None
    assert "Invalid API Key" in result.error_message
    assert fake.counters.get("auth_failures") == 1
    assert topics(ledger, "es_badkey") == ["PayoutStarted", "TransferFailed"]
    assert any(r.name.startswith("stripe") for r in caplog.records), "SDK logs not captured"
    recorded = [
        result.model_dump_json(),
        repr(result),
        repr(gateway),
        *(repr(vars(e)) for e in ledger.history("es_badkey")),
        caplog.text,
        *(r.getMessage() for r in caplog.records),
        *(repr(r.args) for r in caplog.records),
        capsys.readouterr().err,
    ]
    for text in recorded:
        assert SECRET_PART not in text


def test_a_rate_limit_is_not_executed_records_no_failure_and_stays_in_flight(
    ledger: PayoutLedger, fake: FakeStripe
) -> None:
    """A 429 is NOT_EXECUTED: no TransferFailed, the payout stays in flight."""
    fake.inject(faults.rate_limited())

    result = ledger.release_payment(release_request("es_429"))

    assert result.outcome is ReleaseOutcome.NOT_EXECUTED
    assert result.stripe_request_id == transfer_posts(fake)[0].request_id
    assert fake.transfers() == []
    assert_left_in_flight(ledger, fake, "es_429")
    settled = ledger.resume("es_429")
    assert settled.outcome is ReleaseOutcome.RELEASED
    assert [r.idempotency_key for r in transfer_posts(fake)] == ["release_payment:es_429"] * 2


def test_a_rate_limit_reports_stripes_rate_limit_code(
    ledger: PayoutLedger, fake: FakeStripe
) -> None:
    """The result's error_code is Stripe's ``rate_limit``, not the generic error type."""
    fake.inject(faults.rate_limited())

    result = ledger.release_payment(release_request("es_429_code"))

    assert result.outcome is ReleaseOutcome.NOT_EXECUTED
    assert result.error_code == "rate_limit"


def test_a_server_error_leaves_the_outcome_unknown_and_the_payout_in_flight(
    ledger: PayoutLedger, fake: FakeStripe
) -> None:
    """A 500 may hide a transfer: OUTCOME_UNKNOWN and nothing recorded but the claim."""
    fake.inject(faults.server_error())

    result = ledger.release_payment(release_request("es_500"))

    assert result.outcome is ReleaseOutcome.OUTCOME_UNKNOWN
    assert result.error_code == "api_error"
    assert_left_in_flight(ledger, fake, "es_500")


@pytest.mark.parametrize(
    ("fault", "committed"),
    [(faults.drop_before_commit(), 0), (faults.drop_after_commit(), 1)],
    ids=["drop_before_commit", "drop_after_commit"],
)
def test_a_dropped_connection_leaves_the_outcome_unknown(
    ledger: PayoutLedger, fake: FakeStripe, fault: faults.Fault, committed: int
) -> None:
    """No response, whether or not Stripe committed: OUTCOME_UNKNOWN, in flight."""
    fake.inject(fault)

    result = ledger.release_payment(release_request("es_drop"))

    assert result.outcome is ReleaseOutcome.OUTCOME_UNKNOWN
    assert result.transfer_id is None
    assert len(transfers_for(fake, "es_drop")) == committed
    assert_left_in_flight(ledger, fake, "es_drop")


def test_a_response_slower_than_the_gateway_timeout_leaves_the_outcome_unknown(
    make_stripe_ledger: LedgerMaker, sqlite_url: str, fake: FakeStripe, account: str
) -> None:
    """The SDK gives up after ``timeout``; Stripe may still commit: OUTCOME_UNKNOWN."""
    gateway = StripeTransferGateway(
        fake.api_key, api_base=fake.url, timeout=0.3, max_network_retries=0
    )
    ledger = make_stripe_ledger(sqlite_url, gateway=gateway)
    fake.inject(faults.latency(1.0))

    result = ledger.release_payment(release_request("es_slow"))

    assert result.outcome is ReleaseOutcome.OUTCOME_UNKNOWN
    assert_left_in_flight(ledger, fake, "es_slow")
    # The fake commits after the client gave up: the money moved after all.
    wait_for(lambda: len(transfers_for(fake, "es_slow")) == 1, "the fake commits", 10)


# The gateway's own guards.


@pytest.mark.parametrize("key", ["pk_test_123", "", "whsec_abc", "sk-test-no-underscore"])
def test_the_gateway_refuses_a_key_that_is_not_a_secret_key(key: str) -> None:
    """Publishable keys, webhook secrets and junk raise ConfigurationError at once."""
    with pytest.raises(ConfigurationError):
        StripeTransferGateway(key, api_base="http://127.0.0.1:9")


def test_the_gateways_repr_hides_the_api_key() -> None:
    """repr() shows no part of the secret key."""
    gateway = StripeTransferGateway(WRONG_KEY, api_base="http://127.0.0.1:9")

    assert SECRET_PART not in repr(gateway)
    assert SECRET_PART not in str(gateway)


# asyncio hosts.


def test_release_payment_async_pays_once_over_http(ledger: PayoutLedger, fake: FakeStripe) -> None:
    """The async path makes the transfer through the SDK's async transport."""

    async def main() -> tuple[ReleaseOutcome, ReleaseOutcome]:
        first = await ledger.release_payment_async(release_request("es_async"))
        second = await ledger.release_payment_async(release_request("es_async"))
        return first.outcome, second.outcome

    assert asyncio.run(main()) == (ReleaseOutcome.RELEASED, ReleaseOutcome.ALREADY_RELEASED)
    [post] = transfer_posts(fake)
    assert post.headers["Idempotency-Key"] == "release_payment:es_async"
    [transfer] = transfers_for(fake, "es_async")
    assert ledger.get_payout("es_async").transfer_id == transfer["id"]
    assert topics(ledger, "es_async") == ["PayoutStarted", "TransferSucceeded", "Released"]


def test_eight_concurrent_async_releases_make_one_transfer(
    ledger: PayoutLedger, fake: FakeStripe
) -> None:
    """asyncio.gather of 8 releases of one service: one POST, one transfer."""
    fake.inject(faults.latency(0.2))  # keep the winner in flight while the others decide

    async def main() -> list[ReleaseOutcome]:
        results = await asyncio.gather(
            *(ledger.release_payment_async(release_request("es_gather")) for _ in range(8))
        )
        return [r.outcome for r in results]

    outcomes = Counter(asyncio.run(main()))

    assert outcomes[ReleaseOutcome.RELEASED] == 1
    assert set(outcomes) <= {
        ReleaseOutcome.RELEASED,
        ReleaseOutcome.IN_PROGRESS,
        ReleaseOutcome.ALREADY_RELEASED,
    }
    assert len(transfer_posts(fake, "es_gather")) == 1
    assert len(transfers_for(fake, "es_gather")) == 1


@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        ("slower_than_timeout", ReleaseOutcome.OUTCOME_UNKNOWN),
        ("drop_after_commit", ReleaseOutcome.OUTCOME_UNKNOWN),
        ("server_error", ReleaseOutcome.OUTCOME_UNKNOWN),
        ("rate_limited", ReleaseOutcome.NOT_EXECUTED),
        ("balance_insufficient", ReleaseOutcome.FAILED),
    ],
)
def test_async_releases_map_stripes_answers_like_sync_releases(
    make_stripe_ledger: LedgerMaker,
    sqlite_url: str,
    fake: FakeStripe,
    fault: str,
    outcome: ReleaseOutcome,
) -> None:
    """On the httpx transport too: unknown stays in flight, only a refusal is recorded."""
    gateway = StripeTransferGateway(
        fake.api_key, api_base=fake.url, timeout=0.3, max_network_retries=0
    )
    ledger = make_stripe_ledger(sqlite_url, gateway=gateway)
    if fault == "slower_than_timeout":
        fake.inject(faults.latency(1.0))
    elif fault == "drop_after_commit":
        fake.inject(faults.drop_after_commit())
    elif fault == "server_error":
        fake.inject(faults.server_error())
    elif fault == "rate_limited":
        fake.inject(faults.rate_limited())
    else:
        fake.set_balance(CURRENCY, 0)

    result = asyncio.run(ledger.release_payment_async(release_request("es_async_fault")))

    assert result.outcome is outcome
    if outcome is ReleaseOutcome.FAILED:
        assert result.error_code == "balance_insufficient"
        assert topics(ledger, "es_async_fault") == ["PayoutStarted", "TransferFailed"]
    else:
        assert_left_in_flight(ledger, fake, "es_async_fault")

"""Payability and the pinned API version through the stripe SDK, against FakeStripe.

What reaches Stripe (the ``Stripe-Version`` header), how Stripe's refusals for
an unpayable destination become ``provider_action_required``, and that a
release to an account known to be unpayable sends nothing at all.
"""

from __future__ import annotations

import pytest
import stripe

from payout_ledger import (
    STRIPE_API_VERSION,
    DestinationUnpayable,
    LedgerSettings,
    PayabilitySource,
    PayoutLedger,
    PayoutStatus,
    ReleaseOutcome,
)
from payout_ledger.stripe import classify_error
from payout_ledger.testing.fake_stripe import FakeStripe
from tests.stripe.stripe_support import LedgerMaker, release_request, topics, transfer_posts


@pytest.fixture
def ledger(make_stripe_ledger: LedgerMaker, sqlite_url: str) -> PayoutLedger:
    return make_stripe_ledger(sqlite_url)


def test_the_pinned_api_version_is_the_sdks_and_reaches_stripe(
    ledger: PayoutLedger, fake: FakeStripe
) -> None:
    """Every request asks for STRIPE_API_VERSION, the version the SDK is generated for."""
    assert STRIPE_API_VERSION == stripe._api_version._ApiVersion.CURRENT
    assert LedgerSettings(store_url="memory://").stripe_api_version == STRIPE_API_VERSION

    assert ledger.release_payment(release_request("es_version")).success

    [post] = transfer_posts(fake)
    assert post.headers["Stripe-Version"] == STRIPE_API_VERSION


def test_an_inactive_transfers_capability_is_provider_action_required(
    ledger: PayoutLedger, fake: FakeStripe, account: str
) -> None:
    fake.set_capability(account, "transfers", "inactive")

    result = ledger.release_payment(release_request("es_cap"))

    assert result.outcome is ReleaseOutcome.PROVIDER_ACTION_REQUIRED
    assert result.error_code == "transfers_capability_inactive"
    assert topics(ledger, "es_cap") == ["PayoutStarted", "TransferFailed"]
    assert ledger.get_payout("es_cap").failure_code == "insufficient_capabilities_for_transfer"
    payability = ledger.account_payability(account)
    assert payability is not None and payability.source is PayabilitySource.TRANSFER_REFUSED

    # Known now: the next release sends nothing.
    posts = len(fake.requests)
    again = ledger.release_payment(release_request("es_cap"))
    assert again.provider_action_required
    assert len(fake.requests) == posts


def test_after_the_capability_is_back_a_sync_lets_the_next_attempt_pay(
    ledger: PayoutLedger, fake: FakeStripe, account: str
) -> None:
    fake.set_capability(account, "transfers", "inactive")
    assert ledger.release_payment(release_request("es_back")).provider_action_required

    fake.set_capability(account, "transfers", "active")
    synced = ledger.sync_account(account)
    result = ledger.release_payment(release_request("es_back"))

    assert synced.payable and synced.transfers == "active"
    assert result.outcome is ReleaseOutcome.RELEASED
    assert result.attempt == 2
    assert transfer_posts(fake)[-1].idempotency_key == "release_payment.attempt2:es_back"


def test_a_deleted_account_is_no_such_destination(
    ledger: PayoutLedger, fake: FakeStripe, account: str
) -> None:
    fake.delete_account(account)

    result = ledger.release_payment(release_request("es_gone"))

    assert result.outcome is ReleaseOutcome.PROVIDER_ACTION_REQUIRED
    assert result.error_code == "no_such_destination"
    assert ledger.get_payout("es_gone").status is PayoutStatus.FAILED
    synced = ledger.sync_account(account)
    assert (synced.payable, synced.reason) == (False, "no_such_destination")


def test_sync_account_reads_the_disabled_reason(
    ledger: PayoutLedger, fake: FakeStripe, account: str
) -> None:
    fake.set_disabled_reason(account, "rejected.fraud")

    synced = ledger.sync_account(account)

    assert (synced.payable, synced.reason) == (False, "rejected.fraud")
    posts = len(fake.requests)
    assert ledger.release_payment(release_request("es_fraud")).error_code == "rejected.fraud"
    assert len(fake.requests) == posts


@pytest.mark.parametrize(
    ("code", "param", "message", "reason"),
    [
        (
            "insufficient_capabilities_for_transfer",
            None,
            "Your destination account needs to have at least one of the following "
            "capabilities enabled: transfers, crypto_transfers, legacy_payments",
            "transfers_capability_inactive",
        ),
        ("resource_missing", "destination", "No such destination: 'acct_1'", "no_such_destination"),
    ],
)
def test_classify_error_names_an_unpayable_destination(
    code: str, param: str | None, message: str, reason: str
) -> None:
    error = stripe.InvalidRequestError(message, param, code=code, http_status=400)

    classified = classify_error(error, destination="acct_1")

    assert isinstance(classified, DestinationUnpayable)
    assert (classified.reason, classified.account_id, classified.code) == (reason, "acct_1", code)


def test_other_missing_resources_are_not_an_unpayable_destination() -> None:
    error = stripe.InvalidRequestError(
        "No such charge: 'ch_1'", "source_transaction", code="resource_missing", http_status=400
    )
    assert not isinstance(classify_error(error, destination="acct_1"), DestinationUnpayable)

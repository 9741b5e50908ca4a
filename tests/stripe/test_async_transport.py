"""The async transport (httpx) under hosts that turn warnings into errors.

Many hosts run their tests with ``-W error::DeprecationWarning`` or
``filterwarnings = ["error"]``. A warning raised inside the HTTP call becomes
an exception there, which the SDK reports as a connection error: every async
release would end ``outcome_unknown`` although nothing is wrong with Stripe.
"""

from __future__ import annotations

import asyncio
import warnings

from payout_ledger import PayoutLedger, ReleaseOutcome
from payout_ledger.testing.fake_stripe import FakeStripe
from tests.stripe.stripe_support import (
    AMOUNT,
    CURRENCY,
    LedgerMaker,
    release_request,
    topics,
    transfer_posts,
    transfers_for,
)


def _release_async(ledger: PayoutLedger, event_service_id: str) -> ReleaseOutcome:
    result = asyncio.run(ledger.release_payment_async(release_request(event_service_id)))
    return result.outcome


def test_an_async_release_pays_when_every_warning_is_an_error(
    make_stripe_ledger: LedgerMaker, sqlite_url: str, fake: FakeStripe
) -> None:
    """Under warnings-as-errors the async path still makes its one transfer."""
    ledger = make_stripe_ledger(sqlite_url)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outcome = _release_async(ledger, "es_strict")

    assert outcome is ReleaseOutcome.RELEASED
    assert len(transfers_for(fake, "es_strict")) == 1
    assert topics(ledger, "es_strict") == ["PayoutStarted", "TransferSucceeded", "Released"]


def test_the_async_transport_raises_no_warning(
    make_stripe_ledger: LedgerMaker, sqlite_url: str, fake: FakeStripe
) -> None:
    """A release, a repeated release and a decline on httpx warn about nothing."""
    ledger = make_stripe_ledger(sqlite_url)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = _release_async(ledger, "es_quiet")
        again = _release_async(ledger, "es_quiet")
        fake.set_balance(CURRENCY, 0)
        declined = _release_async(ledger, "es_quiet_declined")

    assert [str(w.message) for w in caught] == []
    assert (first, again, declined) == (
        ReleaseOutcome.RELEASED,
        ReleaseOutcome.ALREADY_RELEASED,
        ReleaseOutcome.FAILED,
    )


def test_the_async_transport_sends_the_same_form_as_the_sync_one(
    make_stripe_ledger: LedgerMaker, sqlite_url: str, fake: FakeStripe
) -> None:
    """The body reaches Stripe as the same form parameters, with the same key header."""
    ledger = make_stripe_ledger(sqlite_url)

    assert ledger.release_payment(release_request("es_sync")).success
    assert _release_async(ledger, "es_async_form") is ReleaseOutcome.RELEASED

    [sync_post] = transfer_posts(fake, "es_sync")
    [async_post] = transfer_posts(fake, "es_async_form")
    assert async_post.headers["Content-Type"] == sync_post.headers["Content-Type"]
    assert async_post.headers["Idempotency-Key"] == "release_payment:es_async_form"
    assert async_post.params["amount"] == sync_post.params["amount"] == str(AMOUNT)
    assert set(async_post.params) == set(sync_post.params)
    assert async_post.params["metadata"]["event_service_id"] == "es_async_form"

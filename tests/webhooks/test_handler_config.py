"""Configuring the handler: settings, refused configurations, nothing secret in repr."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import SecretStr

from payout_ledger import ConfigurationError, LedgerSettings, PayoutLedger
from payout_ledger.stripe.webhooks import StripeEventSink, WebhookHandler

from .conftest import OLD_SECRET, SECRET, encode, make_event, payment_intent, sign


def test_from_settings_uses_the_secrets_tolerance_and_environment(ledger: PayoutLedger) -> None:
    """from_settings verifies with every configured secret and the configured tolerance."""
    settings = LedgerSettings(
        store_url="memory://",
        environment="production",
        stripe_webhook_secrets=(SecretStr(SECRET), SecretStr(OLD_SECRET)),
        stripe_webhook_tolerance=60,
    )
    paid: list[str] = []
    handler = WebhookHandler.from_settings(
        ledger, settings, on_payment_succeeded=lambda pi: paid.append(pi["id"])
    )
    assert (handler.tolerance, handler.environment) == (60, "production")

    now = int(time.time())
    for secret in (SECRET, OLD_SECRET):
        event = make_event("payment_intent.succeeded", payment_intent())
        body = encode(event)
        assert handler.handle(body, {"Stripe-Signature": sign(body, secret, now)}).status == 200
    stale = encode(make_event("payment_intent.succeeded", payment_intent()))
    assert handler.handle(stale, {"Stripe-Signature": sign(stale, SECRET, now - 61)}).status == 403
    assert len(paid) == 2

    no_secret = LedgerSettings(store_url="memory://", environment="production")
    refusing = WebhookHandler.from_settings(ledger, no_secret)
    assert refusing.handle(body, {"Stripe-Signature": sign(body)}).status == 403


@pytest.mark.parametrize(
    "options",
    [
        {"secrets": [""]},
        {"secrets": ["  "]},
        {"secrets": [SECRET + "\n"]},
        {"secrets": SECRET},
        {"secrets": [SECRET], "tolerance": 0},
        {"secrets": [SECRET], "tolerance": -5},
        {"secrets": [SECRET], "tolerance": True},
        {"secrets": [SECRET], "environment": "prod"},
        {"secrets": [], "environment": "Production"},
        {"secrets": [SECRET], "max_body_bytes": 0},
    ],
)
def test_configurations_that_cannot_be_safe_are_refused(
    ledger: PayoutLedger, options: dict[str, Any]
) -> None:
    """Blank secrets, a tolerance that skips the age check, unknown environments are errors."""
    with pytest.raises(ConfigurationError) as raised:
        WebhookHandler(ledger, **options)
    assert SECRET not in str(raised.value)


def test_repr_never_shows_a_secret(ledger: PayoutLedger) -> None:
    """The handler's repr counts its secrets but does not show them."""
    handler = WebhookHandler(ledger, secrets=[SECRET, OLD_SECRET], environment="production")
    text = repr(handler)
    assert SECRET not in text
    assert OLD_SECRET not in text
    assert "2 hidden" in text
    assert handler.verifies_signatures


def test_the_ledger_is_a_stripe_event_sink(ledger: PayoutLedger) -> None:
    """PayoutLedger provides the two methods the handler needs."""
    assert isinstance(ledger, StripeEventSink)

"""Who may post events: signatures, secrets, replays and raw bytes."""

from __future__ import annotations

import json
import logging
import time

import pytest

from payout_ledger.domain.stripe_events import StripeEventRecord
from payout_ledger.testing.fake_stripe import FakeStripe

from .conftest import (
    OLD_SECRET,
    SECRET,
    UNKNOWN_SECRET,
    SiteFactory,
    encode,
    make_event,
    payment_intent,
    sign,
)


def test_production_without_webhook_secret_rejects_with_403(make_site: SiteFactory) -> None:
    """In production with no secret configured, every request gets 403 and nothing runs."""
    site = make_site(secrets=(), environment="production")
    event = make_event("payment_intent.succeeded", payment_intent())
    body = encode(event)
    before = site.stored_count()

    for signature in (None, sign(body), sign(body, UNKNOWN_SECRET), "t=1,v1=00"):
        response = site.post(body, signature)
        assert response.status_code == 403
        assert response.json() == {"error": "webhook_secret_not_configured"}
    assert site.post(b"not json").status_code == 403

    assert site.stored_count() == before
    assert site.callbacks.count == 0
    assert not site.ledger.has_stripe_event(event["id"])


def test_missing_signature_header_is_rejected_with_403(make_site: SiteFactory) -> None:
    """A request without Stripe-Signature gets 403 before its body is even parsed."""
    site = make_site()
    event = make_event("payment_intent.succeeded", payment_intent())
    before = site.stored_count()

    response = site.post(encode(event))
    assert response.status_code == 403
    assert response.json() == {"error": "signature_missing"}
    # Malformed JSON would be a 400 once verified: 403 proves nothing was parsed.
    assert site.post(b"{not json").status_code == 403
    assert site.post(encode(event), signature="").status_code == 403

    assert site.stored_count() == before
    assert site.callbacks.count == 0


def test_invalid_signature_is_rejected_with_403(make_site: SiteFactory) -> None:
    """A signature by another secret, or a tampered one, gets 403 and changes nothing."""
    site = make_site()
    event = make_event("payment_intent.succeeded", payment_intent())
    body = encode(event)
    good = sign(body)
    timestamp, digest = good.split(",")
    tampered = f"{timestamp},v1={digest[3:-1]}{'0' if digest[-1] != '0' else '1'}"
    before = site.stored_count()

    for signature in (
        sign(body, UNKNOWN_SECRET),
        tampered,
        timestamp,  # no v1 at all
        f"t=abc,{digest}",
        f"{timestamp},v0={digest[3:]}",
        "garbage",
        f"{timestamp},v1=\u00e9\u00e9",  # non-ASCII: the SDK would raise TypeError
    ):
        response = site.post(body, signature)
        assert response.status_code == 403, signature
        assert response.json() == {"error": "signature_invalid"}

    assert site.stored_count() == before
    assert site.callbacks.count == 0
    assert site.post(body, good).status_code == 200  # the same body, correctly signed


def test_valid_signature_is_accepted_and_payment_intent_succeeded_updates_state(
    make_site: SiteFactory,
) -> None:
    """A payment_intent.succeeded signed by Stripe runs the host callback and is recorded."""
    site = make_site()
    with FakeStripe() as fake:
        fake.add_webhook_endpoint(site.url, SECRET, enabled_events=["payment_intent.succeeded"])
        intent = fake.succeed_payment_intent(5000, "usd", metadata={"event_service_id": "es_1"})
        fake.flush_webhooks()
        deliveries = fake.webhook_deliveries

    assert [(d.event_type, d.status_code) for d in deliveries] == [
        ("payment_intent.succeeded", 200)
    ]
    assert [p["id"] for p in site.callbacks.payments] == [intent["id"]]
    assert site.ledger.has_stripe_event(deliveries[0].event_id)
    captured = site.ledger.captured_payment(intent["id"])
    assert captured is not None
    assert (captured.amount, captured.currency) == (5000, "usd")
    assert captured.metadata == {"event_service_id": "es_1"}
    assert captured.stripe_event_id == deliveries[0].event_id


def test_stale_timestamp_is_rejected_as_a_replay_with_403(make_site: SiteFactory) -> None:
    """A signature older than the tolerance gets 403; one just inside it is accepted."""
    site = make_site(tolerance=120)
    event = make_event("payment_intent.succeeded", payment_intent())
    body = encode(event)
    now = int(time.time())

    stale = site.post(body, sign(body, timestamp=now - 125))
    assert stale.status_code == 403
    assert stale.json() == {"error": "signature_expired"}
    assert site.callbacks.count == 0
    assert not site.ledger.has_stripe_event(event["id"])

    fresh = site.post(body, sign(body, timestamp=now - 100))
    assert fresh.status_code == 200
    assert fresh.json()["outcome"] == "applied"


def test_rotated_secrets_old_and_new_verify_and_an_unknown_secret_fails(
    make_site: SiteFactory,
) -> None:
    """With two secrets configured both verify, a third does not; several v1 entries work."""
    site = make_site(secrets=(SECRET, OLD_SECRET))
    by_old = make_event("account.updated", {"id": "acct_1", "payouts_enabled": True})
    by_new = make_event("account.updated", {"id": "acct_2", "payouts_enabled": False})
    by_unknown = make_event("account.updated", {"id": "acct_3", "payouts_enabled": True})

    assert site.deliver(by_old, OLD_SECRET).status_code == 200
    assert site.deliver(by_new, SECRET).status_code == 200
    assert site.deliver(by_unknown, UNKNOWN_SECRET).status_code == 403
    assert [a[:2] for a in site.callbacks.accounts] == [("acct_1", True), ("acct_2", False)]
    assert not site.ledger.has_stripe_event(by_unknown["id"])

    # During a rotation Stripe sends one v1 per secret: an endpoint that still
    # knows only the old secret accepts the header.
    only_old = make_site(secrets=(OLD_SECRET,))
    event = make_event("account.updated", {"id": "acct_4", "payouts_enabled": True})
    body = encode(event)
    now = int(time.time())
    new_part = sign(body, SECRET, now).split(",")[1]
    old_part = sign(body, OLD_SECRET, now).split(",")[1]
    assert only_old.post(body, f"t={now},{new_part},{old_part}").status_code == 200
    assert only_old.post(body, f"t={now},{new_part}").status_code == 403


def test_body_reserialised_after_signing_fails_with_403(make_site: SiteFactory) -> None:
    """A body parsed and serialised again after signing no longer verifies."""
    site = make_site()
    event = make_event("payment_intent.succeeded", payment_intent())
    signed_body = json.dumps(event, indent=2).encode()
    signature = sign(signed_body)
    reserialised = json.dumps(json.loads(signed_body)).encode()
    assert reserialised != signed_body

    response = site.post(reserialised, signature)
    assert response.status_code == 403
    assert response.json() == {"error": "signature_invalid"}
    assert not site.ledger.has_stripe_event(event["id"])
    assert site.post(signed_body, signature).status_code == 200


def test_signature_is_verified_on_the_raw_bytes_with_unusual_whitespace_and_unicode(
    make_site: SiteFactory,
) -> None:
    """Odd whitespace and raw UTF-8 survive: the signed bytes verify and are stored as sent."""
    site = make_site()
    event = make_event(
        "payment_intent.succeeded",
        payment_intent(note="Zoë ✓ 💸 \u2028 «paid»", event_service_id="es_ünï"),
    )
    text = json.dumps(event, ensure_ascii=False, indent="\t", separators=(" ,\r\n", " :  "))
    body = ("\n  \t" + text + " \r\n\n").encode("utf-8")

    response = site.post(body, sign(body))

    assert response.status_code == 200, response.text
    assert response.json()["outcome"] == "applied"
    assert site.callbacks.payments[0]["metadata"]["note"] == "Zoë ✓ 💸 \u2028 «paid»"
    record: StripeEventRecord = site.ledger.repository.get(StripeEventRecord.create_id(event["id"]))
    assert record.raw_body.encode("utf-8") == body


@pytest.mark.parametrize("environment", ["development", "test", "staging"])
def test_without_a_secret_outside_production_verification_is_skipped_with_a_warning(
    make_site: SiteFactory, environment: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Outside production with no secret each request is processed and logs a WARNING."""
    site = make_site(secrets=(), environment=environment)
    first = make_event("payment_intent.succeeded", payment_intent())
    second = make_event("account.updated", {"id": "acct_9", "payouts_enabled": True})

    with caplog.at_level(logging.WARNING, logger="payout_ledger.webhooks"):
        assert site.post(encode(first)).status_code == 200
        assert site.post(encode(second), signature="t=1,v1=ignored").status_code == 200

    warnings = [
        r
        for r in caplog.records
        if r.name == "payout_ledger.webhooks"
        and r.levelno == logging.WARNING
        and "NOT verified" in r.getMessage()
    ]
    assert len(warnings) == 2
    assert site.ledger.has_stripe_event(first["id"])
    assert site.ledger.has_stripe_event(second["id"])
    assert len(site.callbacks.payments) == 1
    assert site.callbacks.accounts[0][:2] == ("acct_9", True)


def test_header_names_are_matched_case_insensitively(make_site: SiteFactory) -> None:
    """The handler finds Stripe-Signature whatever the header name's case."""
    site = make_site()
    for name in ("Stripe-Signature", "STRIPE-SIGNATURE", "stripe-signature"):
        event = make_event("account.updated", {"id": "acct_1", "payouts_enabled": True})
        body = encode(event)
        response = site.handler.handle(body, {name: sign(body), "Content-Type": "x"})
        assert response.status == 200, name
        assert site.ledger.has_stripe_event(event["id"])

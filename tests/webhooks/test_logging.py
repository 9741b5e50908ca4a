"""Logs name events and outcomes, never secrets, signatures or bodies."""

from __future__ import annotations

import logging
import re
import time

import pytest

from payout_ledger import PayoutLedger

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

CANARY = "canary-7f3a91-body-must-not-be-logged"


def test_secrets_signature_values_and_raw_bodies_never_appear_in_log_records(
    make_site: SiteFactory, ledger: PayoutLedger, caplog: pytest.LogCaptureFixture
) -> None:
    """Every path is exercised at DEBUG; no record contains a secret, signature or body."""
    caplog.set_level(logging.DEBUG)
    site = make_site(secrets=(SECRET, OLD_SECRET))
    signatures: list[str] = []
    bodies: list[bytes] = []

    def post(body: bytes, signature: str | None, expected: int) -> None:
        bodies.append(body)
        if signature is not None:
            signatures.append(signature)
        assert site.post(body, signature).status_code == expected

    def event_body(event_type: str = "payment_intent.succeeded") -> tuple[str, bytes]:
        event = make_event(event_type, payment_intent(note=CANARY))
        return event["id"], encode(event)

    accepted_id, accepted = event_body()
    post(accepted, sign(accepted), 200)
    post(accepted, sign(accepted), 200)  # duplicate
    _, by_old = event_body()
    post(by_old, sign(by_old, OLD_SECRET), 200)
    _, forged = event_body()
    post(forged, sign(forged, UNKNOWN_SECRET), 403)
    post(forged, sign(forged, timestamp=int(time.time()) - 3600), 403)
    post(forged, None, 403)
    post(forged, f"t={int(time.time())},v1={CANARY}", 403)
    malformed = ("{" + CANARY).encode()
    post(malformed, sign(malformed), 400)
    not_event = f'{{"canary": "{CANARY}"}}'.encode()
    post(not_event, sign(not_event), 400)
    site.callbacks.fail = True
    _, failing = event_body()
    post(failing, sign(failing), 500)
    site.callbacks.fail = False

    unverified = make_site(secrets=(), environment="development")
    _, dev_body = event_body("account.updated")
    bodies.append(dev_body)
    assert unverified.post(dev_body).status_code == 200
    refusing = make_site(secrets=(), environment="production")
    assert refusing.post(dev_body, sign(dev_body)).status_code == 403

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts = [formatter.format(record) for record in caplog.records]
    logged = "\n".join(texts)
    forbidden = [SECRET, OLD_SECRET, UNKNOWN_SECRET, CANARY]
    forbidden += signatures
    forbidden += [m for s in signatures for m in re.findall(r"v1=([0-9a-f]{16,})", s)]
    forbidden += [b.decode("utf-8") for b in bodies]
    for value in forbidden:
        assert value not in logged, f"logged: {value[:40]}..."

    # The logs are there, and they name events and outcomes.
    ours = [r for r in caplog.records if r.name == "payout_ledger.webhooks"]
    assert any(accepted_id in r.getMessage() and "applied" in r.getMessage() for r in ours)
    assert any(accepted_id in r.getMessage() and "duplicate" in r.getMessage() for r in ours)
    assert any("host callback failed" in r.getMessage() and r.exc_info for r in ours)
    assert sum("rejected (403)" in r.getMessage() for r in ours) >= 5
    assert any("NOT verified" in r.getMessage() for r in ours)

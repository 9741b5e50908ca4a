"""Stripe API versions: each recorded event keeps its version; others are audit only.

An event's ``data.object`` has the shape of the endpoint's API version, not the
SDK's. The ledger reads events of the version it is pinned to
(``STRIPE_API_VERSION``) and of the versions the host lists in
``stripe_accepted_api_versions``; any other is recorded for audit and changes
nothing: no settlement, no reversal, no capture, no payability change.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import pytest

from payout_ledger import (
    STRIPE_API_VERSION,
    LedgerSettings,
    PayoutLedger,
    PayoutStatus,
    TransferOutcomeUnknown,
)
from payout_ledger.domain.stripe_events import (
    StripeEventOutcome,
    StripeEventReceipt,
    StripeEventRecord,
)
from payout_ledger.testing import InMemoryTransferGateway
from tests.conftest import LedgerFactory
from tests.support import release

OLD_VERSION = "2020-08-27"


def deliver(ledger: PayoutLedger, event: dict[str, Any]) -> StripeEventReceipt:
    body = json.dumps(event).encode()
    return ledger.record_stripe_event(event=event, raw_body=body, headers={})


def event_of(
    event_type: str,
    obj: dict[str, Any],
    version: str | None,
    account: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": event_id or f"evt_v_{time.monotonic_ns()}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": obj},
    }
    if version is not None:
        event["api_version"] = version
    if account is not None:
        event["account"] = account
    return event


def payment(payment_intent_id: str = "pi_1") -> dict[str, Any]:
    return {"id": payment_intent_id, "amount": 5000, "currency": "usd", "metadata": {}}


def transfer_of(ledger: PayoutLedger, gateway: InMemoryTransferGateway) -> dict[str, Any]:
    [transfer] = gateway.transfers
    return {**transfer.as_stripe().__dict__, "object": "transfer"}


def in_flight(ledger: PayoutLedger, gateway: InMemoryTransferGateway) -> dict[str, Any]:
    gateway.fail_next(TransferOutcomeUnknown("response lost"), after_commit=True)
    assert ledger.release_payment(release("es_1")).in_flight
    return transfer_of(ledger, gateway)


ACCOUNT_INACTIVE = {
    "id": "acct_alice",
    "object": "account",
    "payouts_enabled": True,
    "capabilities": {"transfers": "inactive"},
    "requirements": {"disabled_reason": None},
}


# What each recorded event keeps.


def test_each_recorded_event_keeps_its_api_version(ledger: PayoutLedger) -> None:
    event = event_of("customer.created", {"id": "cus_1"}, STRIPE_API_VERSION)
    deliver(ledger, event)

    record = ledger.repository.get(StripeEventRecord.create_id(event["id"]))

    assert record.api_version == STRIPE_API_VERSION
    [received] = ledger.events.get(record.id)
    assert type(received).class_version == 2


@pytest.mark.parametrize(
    ("body_version", "expected"),
    [(OLD_VERSION, OLD_VERSION), (None, None)],
)
def test_a_version_1_record_is_read_with_the_api_version_of_its_raw_body(
    ledger: PayoutLedger, body_version: str | None, expected: str | None
) -> None:
    """Records stored before the field existed are upcast from their own raw body."""
    event = event_of("customer.created", {"id": "cus_1"}, body_version, event_id="evt_v1")
    record = StripeEventRecord.receive(
        stripe_event_id="evt_v1",
        event_type="customer.created",
        livemode=False,
        account=None,
        stripe_created=None,
        raw_body=json.dumps(event),
        headers={},
        outcome="recorded",
        event_service_id=None,
        api_version="replaced below",
    )
    [new] = record.collect_events()
    stored = ledger.mapper.to_stored_event(new)
    transcoder = ledger.mapper.transcoder
    state = transcoder.decode(stored.state)
    del state["api_version"], state["class_version"]  # as the previous release stored it
    ledger.recorder.insert_events([dataclasses.replace(stored, state=transcoder.encode(state))])

    read = ledger.repository.get(StripeEventRecord.create_id("evt_v1"))

    assert read.api_version == expected
    assert ledger.has_stripe_event("evt_v1")


# Versions the ledger does not understand.


def test_a_capture_of_another_version_is_recorded_and_does_nothing(
    ledger: PayoutLedger, caplog: pytest.LogCaptureFixture
) -> None:
    event = event_of("payment_intent.succeeded", payment(), OLD_VERSION)

    with caplog.at_level(logging.WARNING, logger="payout_ledger"):
        receipt = deliver(ledger, event)

    assert receipt.outcome is StripeEventOutcome.RECORDED
    assert receipt.detail is not None and OLD_VERSION in receipt.detail
    assert ledger.captured_payment("pi_1") is None
    assert ledger.has_stripe_event(event["id"])
    [line] = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = line.getMessage()
    for part in (event["id"], OLD_VERSION, STRIPE_API_VERSION, "docs/stripe.md"):
        assert part in message


def test_an_event_without_api_version_is_not_understood(ledger: PayoutLedger) -> None:
    """Stripe's events always carry one: an event without it is audit only."""
    receipt = deliver(ledger, event_of("payment_intent.succeeded", payment(), None))

    assert receipt.outcome is StripeEventOutcome.RECORDED
    assert ledger.captured_payment("pi_1") is None
    assert not ledger.accepts_api_version(None)


def test_a_transfer_report_of_another_version_settles_nothing(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    transfer = in_flight(ledger, gateway)

    receipt = deliver(ledger, event_of("transfer.created", transfer, OLD_VERSION))
    reversal = deliver(
        ledger, event_of("transfer.reversed", {**transfer, "amount_reversed": 5000}, OLD_VERSION)
    )

    assert receipt.outcome is reversal.outcome is StripeEventOutcome.RECORDED
    assert ledger.get_payout("es_1").status is PayoutStatus.IN_FLIGHT
    assert deliver(ledger, event_of("transfer.created", transfer, STRIPE_API_VERSION)).outcome is (
        StripeEventOutcome.APPLIED
    )


def test_an_account_updated_of_another_version_changes_no_payability(
    ledger: PayoutLedger,
) -> None:
    event = event_of("account.updated", ACCOUNT_INACTIVE, OLD_VERSION, account="acct_alice")

    assert deliver(ledger, event).outcome is StripeEventOutcome.RECORDED
    assert ledger.account_payability("acct_alice") is None
    assert ledger.release_payment(release("es_1")).success


def test_a_version_the_host_accepts_acts_on_the_books(make_ledger: LedgerFactory) -> None:
    ledger = make_ledger(stripe_accepted_api_versions=[OLD_VERSION])

    receipt = deliver(ledger, event_of("payment_intent.succeeded", payment(), OLD_VERSION))

    assert receipt.outcome is StripeEventOutcome.APPLIED
    assert ledger.captured_payment("pi_1") is not None
    assert ledger.accepts_api_version(STRIPE_API_VERSION)


def test_the_settings_show_the_pinned_version_and_take_accepted_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PAYOUT_LEDGER_STRIPE_ACCEPTED_API_VERSIONS", f'["{OLD_VERSION}"]')

    settings = LedgerSettings()

    assert settings.stripe_accepted_api_versions == (OLD_VERSION,)
    assert settings.model_dump()["stripe_api_version"] == STRIPE_API_VERSION
    assert f"stripe_api_version='{STRIPE_API_VERSION}'" in repr(settings)

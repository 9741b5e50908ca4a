"""A ledger history that uses every kind of event the library stores.

Shared by the fixture generator, the replay tests and the read-model tests, so
each of them sees paid, retried, failed, in-flight, settled-by-webhook and
reversed payouts, in two currencies and for two providers, plus Stripe event
records and a captured payment.
"""

from __future__ import annotations

import json
from typing import Any

from payout_ledger import (
    STRIPE_API_VERSION,
    PayoutAggregate,
    PayoutLedger,
    ServiceProvider,
    TransferOutcomeUnknown,
)
from payout_ledger.testing import InMemoryTransferGateway, RecordedTransfer

CAROL = ServiceProvider(id="prov_carol", user_id="user_carol", stripe_account_id="acct_carol")
"""A second onboarded provider, paid in euros."""


def release(
    event_service_id: str,
    provider_id: str = "prov_alice",
    amount: int = 5000,
    currency: str = "usd",
) -> dict[str, Any]:
    """A release request as a host would write it."""
    return {
        "event_service_id": event_service_id,
        "provider_id": provider_id,
        "amount": {"amount": amount, "currency": currency},
    }


def transfer_event(
    event_id: str, event_type: str, transfer: RecordedTransfer, amount_reversed: int = 0
) -> dict[str, Any]:
    """A Stripe transfer event about one of the gateway's transfers."""
    obj: dict[str, Any] = {**transfer.as_stripe().__dict__, "object": "transfer"}
    obj["metadata"] = dict(transfer.metadata)
    obj["amount_reversed"] = amount_reversed
    obj["reversed"] = amount_reversed >= transfer.amount
    return {"id": event_id, "object": "event", "type": event_type, "data": {"object": obj}}


def deliver(ledger: PayoutLedger, event: dict[str, Any]) -> None:
    """Record a (verified) Stripe event."""
    event.setdefault("api_version", STRIPE_API_VERSION)  # as Stripe's events always have
    ledger.record_stripe_event(
        event=event,
        raw_body=json.dumps(event).encode(),
        headers={"Stripe-Signature": "t=1,v1=test"},
    )


def run_scenario(ledger: PayoutLedger, gateway: InMemoryTransferGateway, prefix: str = "") -> None:
    """Write a history with every event type; ``prefix`` keeps service ids apart."""
    ledger.release_payment(release(f"{prefix}es_paid", amount=5000))
    ledger.release_payment(release(f"{prefix}es_paid", amount=5000))  # already released

    gateway.decline_next()
    ledger.release_payment(release(f"{prefix}es_retry", amount=7000))
    ledger.release_payment(release(f"{prefix}es_retry", amount=7000))

    gateway.decline_next("account_closed", "The destination account is closed")
    ledger.release_payment(release(f"{prefix}es_failed", provider_id="prov_carol", currency="eur"))

    gateway.fail_next(TransferOutcomeUnknown("timeout"))
    ledger.release_payment(release(f"{prefix}es_inflight", amount=1200))

    gateway.fail_next(TransferOutcomeUnknown("response lost"), after_commit=True)
    ledger.release_payment(release(f"{prefix}es_lost", amount=3300))
    [lost] = gateway.transfers_for(f"{prefix}es_lost")
    deliver(ledger, transfer_event(f"{prefix}evt_created", "transfer.created", lost))

    ledger.release_payment(
        release(f"{prefix}es_reversed", provider_id="prov_carol", amount=9000, currency="eur")
    )
    [paid] = gateway.transfers_for(f"{prefix}es_reversed")
    partly = gateway.reverse(paid.transfer_id, 4000)
    deliver(
        ledger,
        transfer_event(f"{prefix}evt_rev1", "transfer.reversed", partly, partly.amount_reversed),
    )
    whole = gateway.reverse(paid.transfer_id)
    deliver(
        ledger,
        transfer_event(f"{prefix}evt_rev2", "transfer.reversed", whole, whole.amount_reversed),
    )

    deliver(
        ledger,
        {
            "id": f"{prefix}evt_pi",
            "object": "event",
            "type": "payment_intent.succeeded",
            "data": {
                "object": {
                    "id": f"{prefix}pi_1",
                    "object": "payment_intent",
                    "amount": 5000,
                    "currency": "usd",
                    "metadata": {"event_service_id": f"{prefix}es_paid"},
                }
            },
        },
    )
    deliver(
        ledger,
        {
            "id": f"{prefix}evt_account",
            "object": "event",
            "type": "account.updated",
            "data": {"object": {"id": "acct_alice", "object": "account"}},
        },
    )


def run_reversal_scenario(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway, prefix: str = ""
) -> None:
    """Platform reversals: one succeeded, one refused, a reversal reported by a
    webhook in between, and one left in flight (its response lost after Stripe
    made it). The payout ``{prefix}es_rev`` ends 5000 usd, 1500 known reversed,
    reversal attempt 3 (700, reference ``r3``) in flight."""
    service = f"{prefix}es_rev"
    ledger.release_payment(release(service, amount=5000))
    ledger.reverse_payment(service, 1000, reference="r1")
    gateway.decline_next("balance_insufficient")
    ledger.reverse_payment(service, 1000, reference="r2")
    [paid] = gateway.transfers_for(service)
    outside = gateway.reverse(paid.transfer_id, 500)
    reported = transfer_event(
        f"{prefix}evt_rev_out", "transfer.reversed", outside, outside.amount_reversed
    )
    deliver(ledger, {**reported, "api_version": ledger.settings.stripe_api_version})
    gateway.fail_next(TransferOutcomeUnknown("response lost"), after_commit=True)
    ledger.reverse_payment(service, 700, reference="r3")


def plant_ghost_reversal(ledger: PayoutLedger, event_service_id: str) -> int:
    """Write, behind the ledger's back, a reversal of a transfer the payout never made
    (``reversal_without_transfer``); returns its version."""
    payout = ledger.get_payout(event_service_id)
    payout.trigger_event(
        PayoutAggregate.TransferReversed,
        transfer_id="tr_ghost",
        amount_reversed=1,
        currency=payout.currency,
        stripe_event_id=None,
    )
    ledger.save(payout)
    return int(payout.version)

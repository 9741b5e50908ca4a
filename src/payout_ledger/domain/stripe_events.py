"""Stripe events kept in the ledger: each webhook event once, and captured payments.

A verified Stripe event is recorded as a ``StripeEventRecord`` whose id is a
uuid5 of Stripe's event id, so a duplicate delivery cannot be recorded twice:
the store refuses a second aggregate with the same id, in the same
transaction as the event's effect on a payout. The raw body and headers are
kept for audit (Stripe's own event API reaches back only 30 days).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid5

from payout_ledger.domain.chain import ChainedAggregate
from payout_ledger.domain.payout import PAYOUT_NAMESPACE

__all__ = [
    "CapturedPayment",
    "StripeEventOutcome",
    "StripeEventReceipt",
    "StripeEventRecord",
    "api_version_of",
]


class StripeEventOutcome(StrEnum):
    """What recording a Stripe event did."""

    APPLIED = "applied"
    """Recorded, and it changed the ledger (settled, reversed, captured)."""
    RECORDED = "recorded"
    """Recorded for audit only (an unknown type, not ours, an API version the ledger
    does not understand)."""
    DUPLICATE = "duplicate"
    """Recorded before; nothing was done this time."""
    IGNORED = "ignored"
    """Not recorded: a connected account's event of the other mode. Stripe sends a
    live-connected account's test-mode events to the platform's live Connect
    endpoint too; they are not the ledger's business."""


@dataclass(frozen=True)
class StripeEventReceipt:
    """The answer to [`record_stripe_event`][payout_ledger.PayoutLedger.record_stripe_event]."""

    event_id: str
    event_type: str
    outcome: StripeEventOutcome
    event_service_id: str | None = None
    detail: str | None = None


class StripeEventRecord(ChainedAggregate):
    """One Stripe event, as delivered."""

    TOPIC = "payout_ledger:StripeEventRecord"

    class Event(ChainedAggregate.Event):
        TOPIC = "payout_ledger:StripeEventRecord.Event"

    class StripeEventReceived(Event, ChainedAggregate.Created):
        """A verified Stripe event, as delivered.

        Version 2 added ``api_version``, the event's Stripe API version (None when
        the event had none). Version 1 events are upcast with the ``api_version``
        read from their own ``raw_body``.
        """

        TOPIC = "payout_ledger:StripeEventReceived"
        class_version = 2
        stripe_event_id: str
        event_type: str
        livemode: bool
        account: str | None
        stripe_created: int | None
        raw_body: str
        headers: dict[str, str]
        outcome: str
        event_service_id: str | None
        api_version: str | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("api_version", api_version_of(state.get("raw_body")))

    def __init__(
        self,
        stripe_event_id: str,
        event_type: str,
        livemode: bool,
        account: str | None,
        stripe_created: int | None,
        raw_body: str,
        headers: dict[str, str],
        outcome: str,
        event_service_id: str | None,
        api_version: str | None = None,
    ) -> None:
        self.stripe_event_id = stripe_event_id
        self.event_type = event_type
        self.livemode = livemode
        self.account = account
        self.stripe_created = stripe_created
        self.raw_body = raw_body
        self.headers = headers
        self.outcome = outcome
        self.event_service_id = event_service_id
        self.api_version = api_version

    @staticmethod
    def create_id(stripe_event_id: str) -> UUID:
        return uuid5(PAYOUT_NAMESPACE, f"stripe-event:{stripe_event_id}")

    @classmethod
    def receive(cls, **kwargs: Any) -> StripeEventRecord:
        return cls._create(cls.StripeEventReceived, **kwargs)


def api_version_of(raw_body: object) -> str | None:
    """The ``api_version`` of a Stripe event's JSON body, or None (absent, not a string,
    not JSON)."""
    if not isinstance(raw_body, str):
        return None
    try:
        event = json.loads(raw_body)
    except ValueError:
        return None
    version = event.get("api_version") if isinstance(event, dict) else None
    return version if isinstance(version, str) else None


class CapturedPayment(ChainedAggregate):
    """A customer's payment (PaymentIntent) that Stripe reports succeeded."""

    TOPIC = "payout_ledger:CapturedPayment"

    class Event(ChainedAggregate.Event):
        TOPIC = "payout_ledger:CapturedPayment.Event"

    class PaymentCaptured(Event, ChainedAggregate.Created):
        TOPIC = "payout_ledger:PaymentCaptured"
        payment_intent_id: str
        amount: int
        currency: str
        metadata: dict[str, str]
        stripe_event_id: str

    def __init__(
        self,
        payment_intent_id: str,
        amount: int,
        currency: str,
        metadata: dict[str, str],
        stripe_event_id: str,
    ) -> None:
        self.payment_intent_id = payment_intent_id
        self.amount = amount
        self.currency = currency
        self.metadata = metadata
        self.stripe_event_id = stripe_event_id

    @staticmethod
    def create_id(payment_intent_id: str) -> UUID:
        return uuid5(PAYOUT_NAMESPACE, f"payment-intent:{payment_intent_id}")

    @classmethod
    def capture(cls, **kwargs: Any) -> CapturedPayment:
        return cls._create(cls.PaymentCaptured, **kwargs)

"""The fake's Stripe objects and their JSON renderings."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Account",
    "Charge",
    "Event",
    "PaymentIntent",
    "RequestInfo",
    "Reversal",
    "Transfer",
    "new_id",
]

JSON = dict[str, Any]

_ID_ALPHABET = string.ascii_letters + string.digits
EMBEDDED_LIST_LIMIT = 10


def new_id(prefix: str) -> str:
    """Return a fresh Stripe-style id such as ``tr_1a2B3c...``."""
    suffix = "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))
    return f"{prefix}_{suffix}"


@dataclass(frozen=True)
class RequestInfo:
    """The API request behind a change (``None`` fields for test controls)."""

    id: str | None = None
    idempotency_key: str | None = None

    def to_json(self) -> JSON:
        """Render as an Event's ``request`` hash."""
        return {"id": self.id, "idempotency_key": self.idempotency_key}


@dataclass
class Account:
    """A connected account."""

    id: str
    created: int
    seq: int
    type: str
    country: str
    default_currency: str
    email: str | None = None
    business_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    capabilities: dict[str, str] = field(default_factory=dict)
    payouts_enabled: bool = True
    charges_enabled: bool = True
    details_submitted: bool = True
    disabled_reason: str | None = None
    capabilities_checked: bool = False
    """Whether transfers to it need an active transfers capability: true once
    capabilities were requested at creation or set by a test control."""
    available: dict[str, int] = field(default_factory=dict)
    """The connected account's available balance per currency (minor units)."""

    def to_json(self) -> JSON:
        """Render as a Stripe ``account`` object."""
        return {
            "id": self.id,
            "object": "account",
            "business_type": self.business_type,
            "capabilities": dict(self.capabilities),
            "charges_enabled": self.charges_enabled,
            "country": self.country,
            "created": self.created,
            "default_currency": self.default_currency,
            "details_submitted": self.details_submitted,
            "email": self.email,
            "metadata": dict(self.metadata),
            "payouts_enabled": self.payouts_enabled,
            "requirements": {
                "current_deadline": None,
                "currently_due": [],
                "disabled_reason": self.disabled_reason,
                "errors": [],
                "eventually_due": [],
                "past_due": [],
                "pending_verification": [],
            },
            "type": self.type,
        }


@dataclass
class Reversal:
    """A (partial) reversal of a transfer."""

    id: str
    created: int
    seq: int
    amount: int
    currency: str
    transfer: str
    destination_payment_refund: str
    metadata: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> JSON:
        """Render as a Stripe ``transfer_reversal`` object."""
        return {
            "id": self.id,
            "object": "transfer_reversal",
            "amount": self.amount,
            "balance_transaction": None,
            "created": self.created,
            "currency": self.currency,
            "destination_payment_refund": self.destination_payment_refund,
            "metadata": dict(self.metadata),
            "source_refund": None,
            "transfer": self.transfer,
        }


@dataclass
class Transfer:
    """A transfer from the platform balance to a connected account."""

    id: str
    created: int
    seq: int
    amount: int
    currency: str
    destination: str
    destination_payment: str
    description: str | None = None
    transfer_group: str | None = None
    source_transaction: str | None = None
    source_type: str = "card"
    metadata: dict[str, str] = field(default_factory=dict)
    reversals: list[Reversal] = field(default_factory=list)
    livemode: bool = False

    @property
    def amount_reversed(self) -> int:
        """Total reversed so far."""
        return sum(reversal.amount for reversal in self.reversals)

    @property
    def reversed(self) -> bool:
        """Whether the whole amount has been reversed."""
        return self.amount_reversed == self.amount

    def to_json(self) -> JSON:
        """Render as a Stripe ``transfer`` object, newest reversals embedded."""
        newest = sorted(self.reversals, key=lambda r: (r.created, r.seq), reverse=True)
        return {
            "id": self.id,
            "object": "transfer",
            "amount": self.amount,
            "amount_reversed": self.amount_reversed,
            "balance_transaction": None,
            "created": self.created,
            "currency": self.currency,
            "description": self.description,
            "destination": self.destination,
            "destination_payment": self.destination_payment,
            "livemode": self.livemode,
            "metadata": dict(self.metadata),
            "reversals": {
                "object": "list",
                "data": [r.to_json() for r in newest[:EMBEDDED_LIST_LIMIT]],
                "has_more": len(newest) > EMBEDDED_LIST_LIMIT,
                "total_count": len(newest),
                "url": f"/v1/transfers/{self.id}/reversals",
            },
            "reversed": self.reversed,
            "source_transaction": self.source_transaction,
            "source_type": self.source_type,
            "transfer_group": self.transfer_group,
        }


@dataclass
class PaymentIntent:
    """A PaymentIntent that succeeded, with its charge ``latest_charge``."""

    id: str
    created: int
    seq: int
    amount: int
    currency: str
    latest_charge: str
    metadata: dict[str, str] = field(default_factory=dict)
    transfer_group: str | None = None
    status: str = "succeeded"
    livemode: bool = False

    def to_json(self) -> JSON:
        """Render as a Stripe ``payment_intent`` object."""
        return {
            "id": self.id,
            "object": "payment_intent",
            "amount": self.amount,
            "amount_capturable": 0,
            "amount_received": self.amount if self.status == "succeeded" else 0,
            "capture_method": "automatic",
            "created": self.created,
            "currency": self.currency,
            "latest_charge": self.latest_charge,
            "livemode": self.livemode,
            "metadata": dict(self.metadata),
            "status": self.status,
            "transfer_group": self.transfer_group,
        }


@dataclass
class Charge:
    """The captured card charge of a succeeded PaymentIntent."""

    id: str
    created: int
    seq: int
    amount: int
    currency: str
    payment_intent: str
    balance_transaction: str
    metadata: dict[str, str] = field(default_factory=dict)
    transfer_group: str | None = None
    amount_refunded: int = 0
    livemode: bool = False

    def to_json(self) -> JSON:
        """Render as a Stripe ``charge`` object."""
        return {
            "id": self.id,
            "object": "charge",
            "amount": self.amount,
            "amount_captured": self.amount,
            "amount_refunded": self.amount_refunded,
            "balance_transaction": self.balance_transaction,
            "captured": True,
            "created": self.created,
            "currency": self.currency,
            "description": None,
            "disputed": False,
            "failure_code": None,
            "failure_message": None,
            "livemode": self.livemode,
            "metadata": dict(self.metadata),
            "paid": True,
            "payment_intent": self.payment_intent,
            "refunded": self.amount_refunded == self.amount,
            "source_transfer": None,
            "status": "succeeded",
            "transfer_data": None,
            "transfer_group": self.transfer_group,
        }


@dataclass
class Event:
    """A Stripe Event: a snapshot of an object when something happened to it."""

    id: str
    created: int
    seq: int
    type: str
    api_version: str
    data_object: JSON
    request: RequestInfo
    pending_webhooks: int
    previous_attributes: JSON | None = None
    account: str | None = None
    livemode: bool = False

    def to_json(self) -> JSON:
        """Render as a Stripe ``event`` object."""
        data: JSON = {"object": self.data_object}
        if self.previous_attributes is not None:
            data["previous_attributes"] = self.previous_attributes
        rendered: JSON = {
            "id": self.id,
            "object": "event",
            "api_version": self.api_version,
            "created": self.created,
            "data": data,
            "livemode": self.livemode,
            "pending_webhooks": self.pending_webhooks,
            "request": self.request.to_json(),
            "type": self.type,
        }
        if self.account is not None:
            rendered["account"] = self.account
        return rendered

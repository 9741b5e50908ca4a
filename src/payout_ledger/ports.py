"""The ports: what the ledger needs from the host and from Stripe.

The host implements [`ProviderDirectory`][payout_ledger.ProviderDirectory]
over its own provider rows. [`TransferGateway`][payout_ledger.TransferGateway]
is implemented by the Stripe gateway in production and by
[`InMemoryTransferGateway`][payout_ledger.testing.InMemoryTransferGateway] in tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import BaseModel, BeforeValidator, ConfigDict, StringConstraints

__all__ = [
    "Clock",
    "Identifier",
    "ProviderDirectory",
    "ServiceProvider",
    "StripeAccountId",
    "StripeTransfer",
    "SystemClock",
    "TransferGateway",
    "TransferRequest",
    "TransferResult",
    "string_metadata",
]


def _coerce_identifier(value: Any) -> Any:
    # Hosts key rows by int or UUID as often as by str; all become the same text.
    if isinstance(value, bool):
        return value
    if isinstance(value, int) or type(value).__name__ == "UUID":
        return str(value)
    return value


Identifier = Annotated[
    str,
    BeforeValidator(_coerce_identifier),
    StringConstraints(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$"),
]
"""A host id: 1-200 printable ASCII characters without spaces (ints and UUIDs are
accepted and turned into text)."""

StripeAccountId = Annotated[
    str, StringConstraints(pattern=r"^acct_[A-Za-z0-9]{1,250}$", strict=True)
]
"""A Stripe connected account id, ``acct_...``."""


class ServiceProvider(BaseModel):
    """The host's record of a service provider, as the ledger needs it."""

    model_config = ConfigDict(frozen=True)

    id: Identifier
    """The provider's id in the host (``EventService.service_provider_id``)."""
    user_id: Identifier
    """The provider's user id: recorded as the payout's payee."""
    stripe_account_id: StripeAccountId | None = None
    """The connected account that receives transfers; ``None`` until onboarded."""


@runtime_checkable
class ProviderDirectory(Protocol):
    """Looks up service providers in the host's own store."""

    def get_provider(self, provider_id: str) -> ServiceProvider | None:
        """The provider with this id, or ``None`` if there is none."""
        ...


class TransferRequest(BaseModel):
    """One transfer to a connected account, as the ledger asks for it."""

    model_config = ConfigDict(frozen=True)

    amount: int
    currency: str
    destination: str
    idempotency_key: str
    transfer_group: str
    metadata: dict[str, str]


class TransferResult(BaseModel):
    """A transfer that exists at Stripe."""

    model_config = ConfigDict(frozen=True)

    transfer_id: str
    request_id: str | None = None


def string_metadata(value: object) -> dict[str, str]:
    """Stripe metadata as text; ``TypeError`` if it is not an object."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"metadata must be an object, not {type(value).__name__}")
    return {str(k): str(v) for k, v in value.items()}


@dataclass(frozen=True)
class StripeTransfer:
    """A transfer as Stripe reports it (lookups, listings, webhook payloads)."""

    id: str
    amount: int
    currency: str
    destination: str | None
    transfer_group: str | None
    metadata: Mapping[str, str]
    created: int
    amount_reversed: int = 0
    reversed: bool = False

    @classmethod
    def from_stripe(cls, obj: Mapping[str, Any]) -> StripeTransfer:
        """Build from a Stripe transfer object as JSON (a webhook's ``data.object``)."""
        destination = obj.get("destination")
        if isinstance(destination, Mapping):
            destination = destination.get("id")
        return cls(
            id=str(obj["id"]),
            amount=int(obj["amount"]),
            currency=str(obj["currency"]),
            destination=None if destination is None else str(destination),
            transfer_group=obj.get("transfer_group"),
            metadata=string_metadata(obj.get("metadata")),
            created=int(obj.get("created") or 0),
            amount_reversed=int(obj.get("amount_reversed") or 0),
            reversed=bool(obj.get("reversed")),
        )


@runtime_checkable
class TransferGateway(Protocol):
    """Creates transfers, idempotently by ``request.idempotency_key``.

    Implementations raise [`TransferDeclined`][payout_ledger.TransferDeclined]
    for a definite refusal, [`TransferNotExecuted`][payout_ledger.TransferNotExecuted]
    when the request was not executed, and
    [`TransferOutcomeUnknown`][payout_ledger.TransferOutcomeUnknown] when the
    transfer may exist but no answer came back.
    """

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        """Create the transfer, or return the one already made under the key."""
        ...

    def list_transfers(
        self,
        *,
        transfer_group: str | None = None,
        created_gte: int | None = None,
        created_lt: int | None = None,
    ) -> Iterable[StripeTransfer]:
        """Every transfer matching the filters (all pages).

        Raises [`TransferOutcomeUnknown`][payout_ledger.TransferOutcomeUnknown]
        when the provider cannot be asked: an unanswered lookup proves nothing.
        """
        ...


class Clock(Protocol):
    """Tells the time; tests move it to cross Stripe's 24-hour key window."""

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


class SystemClock:
    """The real time in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)

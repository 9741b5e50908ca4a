"""What a host asks for, and what it gets back."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from payout_ledger.domain.money import Money, _library_error
from payout_ledger.errors import InvalidMoneyError, InvalidRequestError
from payout_ledger.service.ports import (
    ChargeId,
    Identifier,
    PaymentIntentId,
    StripeObjectId,
    TransferDescription,
    TransferGroup,
)

__all__ = [
    "ReleaseOutcome",
    "ReleaseRequest",
    "ReleaseResult",
    "ReversalOutcome",
    "ReversalResult",
    "checked_identifier",
    "checked_stripe_id",
]

_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)
_STRIPE_ID: TypeAdapter[str] = TypeAdapter(StripeObjectId)


def checked_identifier(value: object, name: str = "event_service_id") -> str:
    """``value`` as a host id, by the rules of a
    [`ReleaseRequest`][payout_ledger.ReleaseRequest]'s ids (1-200 printable ASCII
    characters without spaces; an int or UUID becomes its text).

    Raises [`InvalidRequestError`][payout_ledger.InvalidRequestError] naming
    ``name`` otherwise (a lone surrogate, a space, an empty or too long id...).
    """
    try:
        return _IDENTIFIER.validate_python(value)
    except ValidationError as exc:
        raise InvalidRequestError(f"{name}: {_message(exc)}") from None


def checked_stripe_id(value: object, name: str = "id") -> str:
    """``value`` as a Stripe object id (``evt_...``, ``pi_...``): a str of 1-255
    printable ASCII characters without spaces, as the webhook handler takes them.

    Raises [`InvalidRequestError`][payout_ledger.InvalidRequestError] naming ``name``.
    """
    try:
        return _STRIPE_ID.validate_python(value)
    except ValidationError as exc:
        raise InvalidRequestError(f"{name}: {_message(exc)}") from None


def _message(exc: ValidationError) -> str:
    return str(exc.errors()[0]["msg"]).removeprefix("Value error, ")


class ReleaseRequest(BaseModel):
    """Release one event service's payment to its provider.

    Built directly (``ReleaseRequest(event_service_id=..., ...)``) or by
    [`parse`][payout_ledger.ReleaseRequest.parse], it raises
    [`InvalidRequestError`][payout_ledger.InvalidRequestError] (or its subclass
    [`InvalidMoneyError`][payout_ledger.InvalidMoneyError] for the amount) for
    a missing, unknown or unacceptable field, never pydantic's ``ValidationError``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _request_error(exc) from None

    event_service_id: Identifier
    """The host's event service id; one payout per event service, ever."""
    provider_id: Identifier
    """``EventService.service_provider_id``; looked up in the ProviderDirectory."""
    amount: Money
    """What the provider receives."""
    source_transaction: ChargeId | PaymentIntentId | None = None
    """The charge that paid for the service (``ch_...``), or its PaymentIntent
    (``pi_...``, whose ``latest_charge`` is used). The transfer then succeeds
    even when the platform's available balance is short: its funds follow the
    charge. The amount may not exceed the charge (less refunds)."""
    transfer_group: TransferGroup | None = None
    """The host's own ``transfer_group`` (the one its PaymentIntent uses); the
    first attempt's is kept for every later one. Default
    ``event_service:{event_service_id}``."""
    description: TransferDescription | None = None
    """Shown on the transfer in Stripe's dashboard."""

    @classmethod
    def parse(cls, value: ReleaseRequest | Mapping[str, Any]) -> ReleaseRequest:
        """Validate a request, raising
        [`InvalidRequestError`][payout_ledger.InvalidRequestError] (or its
        subclass [`InvalidMoneyError`][payout_ledger.InvalidMoneyError])."""
        if isinstance(value, ReleaseRequest):
            return value
        if not isinstance(value, Mapping):
            raise InvalidRequestError(
                f"a release request is a ReleaseRequest or a mapping, not {type(value).__name__}"
            )
        if not all(isinstance(key, str) for key in value):
            raise InvalidRequestError("a release request's keys are its field names (str)")
        try:
            return cls.model_validate(dict(value))
        except ValidationError as exc:
            raise _request_error(exc) from None


def _request_error(exc: ValidationError) -> InvalidRequestError:
    money = exc.errors()[0]["loc"][:1] == ("amount",)
    return _library_error(exc, InvalidMoneyError if money else InvalidRequestError)


class ReleaseOutcome(StrEnum):
    """How a release ended."""

    RELEASED = "released"
    """This call made (or found) the transfer and released the payment."""
    ALREADY_RELEASED = "already_released"
    """Released earlier; nothing was sent to Stripe."""
    IN_PROGRESS = "in_progress"
    """Another release of this service is in flight; nothing was sent to Stripe."""
    ONBOARDING_REQUIRED = "onboarding_required"
    """The provider has no connected account yet; nothing was recorded."""
    PROVIDER_ACTION_REQUIRED = "provider_action_required"
    """The provider's connected account cannot be paid (its transfers capability is
    not active, Stripe disabled it, or it no longer exists): ``error_code`` and
    ``error_message`` say why. Either nothing was recorded or sent (the ledger
    knew it already), or Stripe refused this attempt for that reason and the
    refusal is recorded. A release after the account is payable again (a newer
    ``account.updated``, or ``sync_account``) starts a new attempt."""
    FAILED = "failed"
    """Stripe refused the transfer; the service can be released again."""
    OUTCOME_UNKNOWN = "outcome_unknown"
    """No answer from Stripe; the payout stays in flight until it is settled."""
    NOT_EXECUTED = "not_executed"
    """Stripe did not execute the request (rate limited); the payout stays in
    flight and is retried with the same key when it is settled."""


class ReleaseResult(BaseModel):
    """The answer to a release. ``success`` is true only when the provider is paid."""

    model_config = ConfigDict(frozen=True)

    event_service_id: str
    payout_id: UUID
    outcome: ReleaseOutcome
    transfer_id: str | None = None
    attempt: int | None = None
    idempotency_key: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    stripe_request_id: str | None = None
    detail: str | None = None
    """How the outcome came about, when it was settled (e.g. "found at Stripe")."""

    @property
    def success(self) -> bool:
        """The payment is released (by this call or an earlier one)."""
        return self.outcome in (
            ReleaseOutcome.RELEASED,
            ReleaseOutcome.ALREADY_RELEASED,
        )

    @property
    def already_released(self) -> bool:
        return self.outcome is ReleaseOutcome.ALREADY_RELEASED

    @property
    def in_progress(self) -> bool:
        return self.outcome is ReleaseOutcome.IN_PROGRESS

    @property
    def onboarding_required(self) -> bool:
        return self.outcome is ReleaseOutcome.ONBOARDING_REQUIRED

    @property
    def provider_action_required(self) -> bool:
        """The provider's connected account cannot be paid until the provider acts."""
        return self.outcome is ReleaseOutcome.PROVIDER_ACTION_REQUIRED

    @property
    def in_flight(self) -> bool:
        """The payout is left in flight with an unknown or deferred outcome."""
        return self.outcome in (
            ReleaseOutcome.OUTCOME_UNKNOWN,
            ReleaseOutcome.NOT_EXECUTED,
        )


class ReversalOutcome(StrEnum):
    """How a reversal ended."""

    REVERSED = "reversed"
    """This call made (or found) the reversal at Stripe and recorded it."""
    ALREADY_REVERSED = "already_reversed"
    """Reversed earlier (this reference, or the whole transfer); nothing was sent."""
    IN_PROGRESS = "in_progress"
    """Another reversal of this transfer is in flight; nothing was sent."""
    FAILED = "failed"
    """Stripe refused the reversal (e.g. ``balance_insufficient``: the connected
    account lacks the funds); nothing moved, it can be asked for again."""
    OUTCOME_UNKNOWN = "outcome_unknown"
    """No answer from Stripe; the reversal stays in flight until it is settled."""
    NOT_EXECUTED = "not_executed"
    """Stripe did not execute the request (rate limited); it stays in flight."""


class ReversalResult(BaseModel):
    """The answer to a reversal. ``success`` is true only when the reversal exists."""

    model_config = ConfigDict(frozen=True)

    event_service_id: str
    payout_id: UUID
    outcome: ReversalOutcome
    reference: str
    amount: int
    """The reversal's amount in minor units (the claim's, or what was asked)."""
    currency: str
    reversal_id: str | None = None
    transfer_id: str | None = None
    attempt: int | None = None
    """The reversal attempt (each has its own idempotency key)."""
    idempotency_key: str | None = None
    amount_reversed: int = 0
    """What the ledger knows is reversed of the transfer in all, after this call."""
    error_code: str | None = None
    error_message: str | None = None
    stripe_request_id: str | None = None
    detail: str | None = None

    @property
    def success(self) -> bool:
        """The reversal exists at Stripe (made by this call or an earlier one)."""
        return self.outcome in (ReversalOutcome.REVERSED, ReversalOutcome.ALREADY_REVERSED)

    @property
    def in_flight(self) -> bool:
        """The reversal is left in flight with an unknown or deferred outcome."""
        return self.outcome in (ReversalOutcome.OUTCOME_UNKNOWN, ReversalOutcome.NOT_EXECUTED)

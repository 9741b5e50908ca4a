"""The ports: what the ledger needs from the host and from Stripe.

The host implements [`ProviderDirectory`][payout_ledger.ProviderDirectory]
over its own provider rows. [`TransferGateway`][payout_ledger.TransferGateway]
is implemented by the Stripe gateway in production and by
[`InMemoryTransferGateway`][payout_ledger.testing.InMemoryTransferGateway] in tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from payout_ledger.domain.money import Money, _currency, _library_error, _minor_units
from payout_ledger.errors import (
    ConfigurationError,
    InvalidMoneyError,
    InvalidRequestError,
    SendWindowClosed,
)

__all__ = [
    "MAX_METADATA_KEYS",
    "MAX_METADATA_KEY_LENGTH",
    "MAX_METADATA_VALUE_LENGTH",
    "AccountLookup",
    "ChargeGateway",
    "ChargeId",
    "Clock",
    "Identifier",
    "NoProviders",
    "NoTransfers",
    "PaymentIntentId",
    "ProviderDirectory",
    "ReversalCreated",
    "ReversalGateway",
    "ReversalRequest",
    "SendWindow",
    "ServiceProvider",
    "StripeAccount",
    "StripeAccountId",
    "StripeCharge",
    "StripeObjectId",
    "StripeReversal",
    "StripeTransfer",
    "SystemClock",
    "TransferDescription",
    "TransferGateway",
    "TransferGroup",
    "TransferRequest",
    "TransferResult",
    "check_send_window",
    "elapsed_seconds",
    "monotonic_of",
    "sending_within",
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

StripeObjectId = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$", strict=True)
]
"""A Stripe object's id (``evt_...``, ``pi_...``): 1-255 printable ASCII characters
without spaces, as the webhook handler takes them."""

ChargeId = Annotated[str, StringConstraints(pattern=r"^ch_[A-Za-z0-9]{1,250}$", strict=True)]
"""A Stripe charge id, ``ch_...``: what a transfer's ``source_transaction`` names."""

PaymentIntentId = Annotated[str, StringConstraints(pattern=r"^pi_[A-Za-z0-9]{1,250}$", strict=True)]
"""A Stripe PaymentIntent id, ``pi_...``: its ``latest_charge`` is the charge."""

TransferGroup = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$", strict=True)
]
"""A host's own ``transfer_group``: 1-200 printable ASCII characters without spaces."""

TransferDescription = Annotated[
    str,
    StringConstraints(min_length=1, max_length=350, pattern=r"^[^\x00-\x1f\x7f]+$", strict=True),
]
"""A transfer's description: 1-350 characters without control characters."""

MAX_METADATA_KEYS = 50
"""Stripe's limit on metadata pairs (Stripe docs, "Metadata")."""
MAX_METADATA_KEY_LENGTH = 40
"""Stripe's limit on a metadata key's length; keys may not contain ``[`` or ``]``."""
MAX_METADATA_VALUE_LENGTH = 500
"""Stripe's limit on a metadata value's length. The ledger sends ``event_service_id``
(an [`Identifier`][payout_ledger.service.ports.Identifier], at most 200 characters),
``payout_id`` (a UUID) and ``attempt``: always within it."""
_MAX_IDEMPOTENCY_KEY_LENGTH = 255  # Stripe's limit (payout.MAX_IDEMPOTENCY_KEY_LENGTH)


class ServiceProvider(BaseModel):
    """The host's record of a service provider, as the ledger needs it.

    Raises [`InvalidRequestError`][payout_ledger.InvalidRequestError] when a
    field is missing or not acceptable (pydantic's ``ValidationError`` never
    reaches the host).
    """

    model_config = ConfigDict(frozen=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _library_error(exc, InvalidRequestError, "service provider: ") from None

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
    """One transfer to a connected account, as the ledger asks for it.

    It holds only what Stripe takes: an amount and currency
    [`Money`][payout_ledger.Money] accepts (at most eight digits for most
    currencies), an ``acct_`` destination, an idempotency key of at most 255
    characters, and metadata of at most 50 pairs, keys of at most 40 characters
    (without ``[`` or ``]``), values of at most 500. Anything else raises
    [`InvalidRequestError`][payout_ledger.InvalidRequestError] (or
    [`InvalidMoneyError`][payout_ledger.InvalidMoneyError] for the money).
    """

    model_config = ConfigDict(frozen=True)

    amount: Annotated[int, BeforeValidator(_minor_units)]
    currency: Annotated[str, BeforeValidator(_currency)]
    destination: StripeAccountId
    idempotency_key: Annotated[
        str, StringConstraints(min_length=1, max_length=_MAX_IDEMPOTENCY_KEY_LENGTH, strict=True)
    ]
    transfer_group: Annotated[str, StringConstraints(strict=True)]
    metadata: dict[str, str]
    source_transaction: ChargeId | None = None
    """The charge the transfer's funds follow (Stripe's ``source_transaction``)."""
    description: TransferDescription | None = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            money = exc.errors()[0]["loc"][:1] in (("amount",), ("currency",))
            error_class = InvalidMoneyError if money else InvalidRequestError
            raise _library_error(exc, error_class, "transfer request: ") from None

    @field_validator("metadata")
    @classmethod
    def _within_stripes_metadata_limits(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} metadata keys")
        for key, item in value.items():
            if not 0 < len(key) <= MAX_METADATA_KEY_LENGTH or "[" in key or "]" in key:
                raise ValueError(
                    f"metadata keys have 1-{MAX_METADATA_KEY_LENGTH} characters, without [ or ]"
                )
            if len(item) > MAX_METADATA_VALUE_LENGTH:
                raise ValueError(
                    f"metadata values have at most {MAX_METADATA_VALUE_LENGTH} characters"
                )
        return value

    @model_validator(mode="after")
    def _money_stripe_takes(self) -> TransferRequest:
        Money(self.amount, self.currency)  # InvalidMoneyError above Stripe's maximum
        return self


class TransferResult(BaseModel):
    """A transfer that exists at Stripe."""

    model_config = ConfigDict(frozen=True)

    transfer_id: str
    request_id: str | None = None


class ReversalRequest(BaseModel):
    """One reversal of a transfer, as the ledger asks for it (Stripe's
    ``POST /v1/transfers/{id}/reversals``)."""

    model_config = ConfigDict(frozen=True)

    transfer_id: StripeObjectId
    amount: Annotated[int, BeforeValidator(_minor_units)]
    currency: Annotated[str, BeforeValidator(_currency)]
    idempotency_key: Annotated[
        str, StringConstraints(min_length=1, max_length=_MAX_IDEMPOTENCY_KEY_LENGTH, strict=True)
    ]
    metadata: dict[str, str]

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _library_error(exc, InvalidRequestError, "reversal request: ") from None


class ReversalCreated(BaseModel):
    """A reversal that exists at Stripe."""

    model_config = ConfigDict(frozen=True)

    reversal_id: str
    request_id: str | None = None


@dataclass(frozen=True)
class StripeReversal:
    """A transfer reversal as Stripe reports it."""

    id: str
    transfer: str
    amount: int
    currency: str
    metadata: Mapping[str, str]
    created: int

    @classmethod
    def from_stripe(cls, obj: Mapping[str, Any]) -> StripeReversal:
        """Build from a Stripe ``transfer_reversal`` object as JSON."""
        transfer = obj.get("transfer")
        if isinstance(transfer, Mapping):
            transfer = transfer.get("id")
        return cls(
            id=str(obj["id"]),
            transfer=str(transfer),
            amount=int(obj["amount"]),
            currency=str(obj["currency"]),
            metadata=string_metadata(obj.get("metadata")),
            created=int(obj.get("created") or 0),
        )


@dataclass(frozen=True)
class StripeCharge:
    """What the ledger needs of a charge named as a transfer's source transaction."""

    id: str
    amount: int
    amount_refunded: int
    currency: str


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

    Implementations call [`check_send_window`][payout_ledger.service.ports.check_send_window]
    immediately before each HTTP attempt of ``create_transfer``, and raise
    [`TransferDeclined`][payout_ledger.TransferDeclined] for a definite refusal,
    [`TransferNotExecuted`][payout_ledger.TransferNotExecuted] when the request
    was not executed, and
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


@runtime_checkable
class ReversalGateway(Protocol):
    """Reverses transfers, idempotently by ``request.idempotency_key``: what
    [`reverse_payment`][payout_ledger.PayoutLedger.reverse_payment] needs besides a
    [`TransferGateway`][payout_ledger.TransferGateway].

    ``create_reversal`` raises the same errors as ``create_transfer`` (and calls
    [`check_send_window`][payout_ledger.service.ports.check_send_window] before
    each HTTP attempt); ``list_reversals`` raises
    [`TransferOutcomeUnknown`][payout_ledger.TransferOutcomeUnknown] when Stripe
    cannot be asked.
    """

    def create_reversal(self, request: ReversalRequest) -> ReversalCreated:
        """Reverse (part of) the transfer, or return the reversal made under the key."""
        ...

    def list_reversals(self, transfer_id: str) -> Iterable[StripeReversal]:
        """Every reversal of the transfer (all pages)."""
        ...


@runtime_checkable
class ChargeGateway(Protocol):
    """Looks up the charge a transfer names as its ``source_transaction``."""

    def retrieve_charge(self, charge_id: str) -> StripeCharge:
        """The charge; [`TransferDeclined`][payout_ledger.TransferDeclined] if there is none."""
        ...

    def latest_charge(self, payment_intent_id: str) -> str:
        """The PaymentIntent's ``latest_charge``; TransferDeclined if it has none."""
        ...


class Clock(Protocol):
    """Tells the time: when a claim was made, for people and reports.

    No safety decision depends on it alone (see docs/concepts.md): hosts' clocks
    may disagree by hours. A clock may also have a ``monotonic()`` method
    (seconds, only ever moving forward, counting while the machine sleeps):
    the ledger measures its send windows with it and with ``now()``, and tests
    give one that moves with their fake time. Without one the ledger uses
    [`elapsed_seconds`][payout_ledger.service.ports.elapsed_seconds].
    """

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


def elapsed_seconds() -> float:
    """Seconds on a clock that only moves forward and keeps counting while the
    machine is suspended (Linux ``CLOCK_BOOTTIME``; ``time.monotonic`` elsewhere).

    ``time.monotonic`` stops while a VM is paused or a laptop sleeps: a claimant
    suspended for a day would think no time had passed.
    """
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


class SystemClock:
    """The real time in UTC, and a monotonic clock that counts suspended time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return elapsed_seconds()


def monotonic_of(clock: Clock) -> Callable[[], float]:
    """The clock's ``monotonic()``, else
    [`elapsed_seconds`][payout_ledger.service.ports.elapsed_seconds]."""
    monotonic = getattr(clock, "monotonic", None)
    return monotonic if callable(monotonic) else elapsed_seconds


@dataclass(frozen=True)
class SendWindow:
    """When the ledger may still send one attempt's transfer request to Stripe.

    It opens *before* the claim is saved (or before a resume asks Stripe for the
    attempt's transfer) and lasts ``seconds``, measured with ``monotonic`` and,
    when given, with the wall clock ``wall`` too: it is closed as soon as either
    says so (a wall clock stepped back cannot keep it open, one stepped forward
    only closes it early, which is safe).
    Every request with the attempt's key is started inside a window whose
    opening came before any transfer made under that key, so no request can
    reach Stripe after the key may have been pruned (24 hours); see
    docs/concepts.md for the argument.
    """

    opened: float
    seconds: float
    monotonic: Callable[[], float]
    wall_opened: float | None = None
    wall: Callable[[], float] | None = None

    def remaining(self) -> float:
        """Seconds left; zero or less once it has closed."""
        elapsed = self.monotonic() - self.opened
        if self.wall is not None and self.wall_opened is not None:
            elapsed = max(elapsed, self.wall() - self.wall_opened)
        return self.seconds - elapsed

    def check(self) -> None:
        """Raise [`SendWindowClosed`][payout_ledger.SendWindowClosed] once it has closed."""
        if self.remaining() <= 0:
            raise SendWindowClosed(
                f"the attempt's send window of {self.seconds:g} s closed; "
                "the payout stays in flight for a resume"
            )


_send_window: ContextVar[SendWindow | None] = ContextVar("payout_ledger_send_window", default=None)


@contextmanager
def sending_within(window: SendWindow) -> Iterator[None]:
    """Run a gateway call inside ``window`` (the ledger does this around each call)."""
    token = _send_window.set(window)
    try:
        yield
    finally:
        _send_window.reset(token)


def check_send_window() -> None:
    """Call immediately before each HTTP attempt that may create a transfer.

    Raises [`SendWindowClosed`][payout_ledger.SendWindowClosed] when the
    ledger's window for this attempt has closed; does nothing outside a ledger
    call. [`StripeTransferGateway`][payout_ledger.stripe.StripeTransferGateway]
    calls it before every try of the SDK, retries included; a host's own
    gateway with retries of its own must call it too.
    """
    window = _send_window.get()
    if window is not None:
        window.check()


@dataclass(frozen=True)
class StripeAccount:
    """A connected account's payability as Stripe reports it (``accounts.retrieve``).

    ``deleted`` is true when Stripe has no such account (``resource_missing``) or
    answers with a deleted account object.
    """

    id: str
    payouts_enabled: bool | None
    transfers: str | None
    """The ``transfers`` capability's status (``active``, ``inactive``, ``pending``),
    None when the account has no such capability listed."""
    disabled_reason: str | None
    deleted: bool = False

    @classmethod
    def from_stripe(cls, obj: Mapping[str, Any]) -> StripeAccount:
        """Build from a Stripe account object as JSON (an ``account.updated``'s ``data.object``).

        Raises ``TypeError`` when a field has the wrong type."""
        capabilities = obj.get("capabilities") or {}
        requirements = obj.get("requirements") or {}
        if not isinstance(capabilities, Mapping) or not isinstance(requirements, Mapping):
            raise TypeError("an account's capabilities and requirements are objects")
        transfers = capabilities.get("transfers")
        reason = requirements.get("disabled_reason")
        enabled = obj.get("payouts_enabled")
        for name, value in (("transfers", transfers), ("disabled_reason", reason)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"an account's {name} is a string")
        if enabled is not None and not isinstance(enabled, bool):
            raise TypeError("an account's payouts_enabled is true or false")
        return cls(
            id=str(obj.get("id")),
            payouts_enabled=enabled,
            transfers=transfers,
            disabled_reason=reason or None,
            deleted=obj.get("deleted") is True,
        )


@runtime_checkable
class AccountLookup(Protocol):
    """A gateway that can also ask Stripe for a connected account.

    [`StripeTransferGateway`][payout_ledger.stripe.StripeTransferGateway] and
    [`InMemoryTransferGateway`][payout_ledger.testing.InMemoryTransferGateway]
    implement it; a host's own gateway without it still transfers, and only
    [`sync_account`][payout_ledger.PayoutLedger.sync_account] needs it.
    """

    def retrieve_account(self, account_id: str) -> StripeAccount:
        """The account as Stripe has it now (``deleted=True`` when Stripe has no
        such account). Raises [`GatewayError`][payout_ledger.GatewayError] when
        Stripe cannot be asked."""
        ...


class NoProviders:
    """The provider directory of a ledger that only reads or settles recorded
    payouts: it never looks a provider up, and knows none."""

    def get_provider(self, provider_id: str) -> ServiceProvider | None:
        return None


class NoTransfers:
    """The gateway of a ledger that only reads (the audit commands): it never moves
    money and never calls Stripe.

    ``livemode``: the mode of the ledger it stands in for (``None``: not told), so
    that the ledger's [`livemode`][payout_ledger.PayoutLedger.livemode] is that
    ledger's when no key says it.
    """

    def __init__(self, livemode: bool | None = None) -> None:
        self.livemode = livemode

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        raise ConfigurationError("audit commands do not make transfers")

    def list_transfers(
        self,
        *,
        transfer_group: str | None = None,
        created_gte: int | None = None,
        created_lt: int | None = None,
    ) -> list[StripeTransfer]:
        raise ConfigurationError("audit commands do not call Stripe")

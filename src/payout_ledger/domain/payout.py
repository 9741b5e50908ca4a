"""The payout of one event service, as an event-sourced aggregate.

A payout's whole life is four kinds of event:

* ``PayoutStarted`` - an attempt to transfer is claimed (attempt 1, 2, ...).
  Saving it is the claim: two callers cannot both save version *n*, so only
  one of them ever asks Stripe for money.
* ``TransferFailed`` - Stripe definitely refused the attempt; nothing moved and
  the service can be released again, with a new idempotency key.
* ``TransferSucceeded`` - the transfer exists at Stripe (its id is recorded).
* ``Released`` - the service's payment is released to its provider.
* ``TransferReversed`` - Stripe reports (part of) the transfer reversed; it
  carries the cumulative reversed amount, so deliveries in any order add up.
* ``ReversalStarted`` - the platform claims a reversal attempt of the transfer
  (one at a time; saving it is the claim, as for ``PayoutStarted``).
* ``ReversalSucceeded`` / ``ReversalFailed`` - the attempt's reversal exists
  at Stripe, or Stripe definitely refused it.

The ``apply`` methods only assign: every rule lives in the command methods and
in [`PayoutLedger`][payout_ledger.PayoutLedger], so events stored under
yesterday's rules still replay today. Topics are explicit and stable, so
classes can be renamed without breaking replay.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.utils import get_topic

from payout_ledger.domain.chain import ChainedAggregate, create_or_continue

__all__ = [
    "FULL_REVERSAL",
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "PAYOUT_NAMESPACE",
    "REVERSAL_CLAIMS",
    "TRANSFER_CLAIMS",
    "PayoutAggregate",
    "PayoutStatus",
    "ReversalStatus",
    "idempotency_key",
    "parse_idempotency_key",
    "parse_reversal_idempotency_key",
    "reversal_idempotency_key",
]

PAYOUT_NAMESPACE = UUID("6f1c3c52-5d0e-4b8e-9a4f-3f0c2b7d9e11")
"""Namespace of the uuid5 payout ids; fixed forever, or ids would change."""


MAX_IDEMPOTENCY_KEY_LENGTH = 255
"""Stripe's limit on an idempotency key's length."""

_FIRST_ATTEMPT_PREFIX = "release_payment:"
_LATER_ATTEMPT = re.compile(r"release_payment\.attempt([1-9][0-9]*):")
_REVERSAL_ATTEMPT = re.compile(r"reverse_payment\.attempt([1-9][0-9]*):")

FULL_REVERSAL = "full"
"""The reference of a full reversal asked for without one of the host's."""


def idempotency_key(event_service_id: str, attempt: int) -> str:
    """The Stripe idempotency key of one attempt.

    The first attempt's key is ``release_payment:{event_service_id}``. Stripe
    caches a refusal under its key, so each later attempt gets its own:
    ``release_payment.attempt{N}:{event_service_id}``. The part before the first
    ``:`` names the attempt and everything after it the service, so no two
    (service, attempt) pairs share a key whatever the service ids contain
    ([`parse_idempotency_key`][payout_ledger.domain.payout.parse_idempotency_key]
    inverts it).
    """
    if attempt < 1:
        raise ValueError(f"attempts are numbered from 1, not {attempt}")
    if attempt == 1:
        return f"{_FIRST_ATTEMPT_PREFIX}{event_service_id}"
    return f"release_payment.attempt{attempt}:{event_service_id}"


def parse_idempotency_key(key: str) -> tuple[str, int] | None:
    """The (event service id, attempt) a key was made for, or None if it is not one."""
    if key.startswith(_FIRST_ATTEMPT_PREFIX):
        return key[len(_FIRST_ATTEMPT_PREFIX) :], 1
    match = _LATER_ATTEMPT.match(key)
    if match is None or int(match.group(1)) < 2:
        return None
    return key[match.end() :], int(match.group(1))


def reversal_idempotency_key(event_service_id: str, attempt: int) -> str:
    """The Stripe idempotency key of one reversal attempt of a service's transfer:
    ``reverse_payment.attempt{N}:{event_service_id}``, never a release's key."""
    if attempt < 1:
        raise ValueError(f"attempts are numbered from 1, not {attempt}")
    return f"reverse_payment.attempt{attempt}:{event_service_id}"


def parse_reversal_idempotency_key(key: str) -> tuple[str, int] | None:
    """The (event service id, reversal attempt) a reversal key was made for, or None."""
    match = _REVERSAL_ATTEMPT.match(key)
    if match is None:
        return None
    return key[match.end() :], int(match.group(1))


def transfer_group(event_service_id: str) -> str:
    """The Stripe ``transfer_group`` that names every transfer of one service."""
    return f"event_service:{event_service_id}"


class PayoutStatus(StrEnum):
    """Where a payout stands."""

    IN_FLIGHT = "in_flight"
    """An attempt is claimed and has no recorded outcome yet."""
    FAILED = "failed"
    """The last attempt was definitely refused; releasable again."""
    TRANSFERRED = "transferred"
    """The transfer exists at Stripe; ``Released`` is being recorded."""
    RELEASED = "released"
    """Paid."""
    REVERSED = "reversed"
    """Paid, then the whole transfer was reversed at Stripe."""


class ReversalStatus(StrEnum):
    """Where the payout's latest reversal attempt stands."""

    IN_FLIGHT = "in_flight"
    """Claimed, without a recorded outcome yet."""
    SUCCEEDED = "succeeded"
    """The reversal exists at Stripe."""
    FAILED = "failed"
    """Stripe definitely refused it; nothing moved."""


class PayoutAggregate(ChainedAggregate):
    """The payout of one event service to its provider's connected account.

    Every event is chained by hash to the payout's previous event (see
    [`ChainedAggregate`][payout_ledger.domain.chain.ChainedAggregate]).
    """

    TOPIC = "payout_ledger:PayoutAggregate"

    class Event(ChainedAggregate.Event):
        TOPIC = "payout_ledger:PayoutAggregate.Event"

    class PayoutStarted(Event, ChainedAggregate.Created):
        """An attempt to transfer the payout is claimed.

        It creates the aggregate on the first attempt and starts each later
        attempt on the existing one.

        Version 2 added ``started_at``; version 1 events (stored without it)
        are upcast with their own ``timestamp``, the moment of the claim.
        Version 3 added ``source_transaction`` (the charge that paid for the
        service) and ``description``; older events had neither.
        """

        TOPIC = "payout_ledger:PayoutStarted"
        class_version = 3
        event_service_id: str
        provider_id: str
        payee_user_id: str
        destination_account: str | None
        amount: int
        currency: str
        attempt: int
        idempotency_key: str
        transfer_group: str
        started_at: datetime
        """The ledger clock's time at the claim: Stripe's key window is measured from it."""
        source_transaction: str | None
        """The charge (``ch_...``) the transfer's funds follow, if the host named one."""
        description: str | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("started_at", state["timestamp"])

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state.setdefault("source_transaction", None)
            state.setdefault("description", None)

        def mutate(self, aggregate: Any) -> Any:
            return create_or_continue(self, aggregate)

        def apply(self, aggregate: PayoutAggregate) -> None:
            aggregate.event_service_id = self.event_service_id
            aggregate.provider_id = self.provider_id
            aggregate.payee_user_id = self.payee_user_id
            aggregate.destination_account = self.destination_account
            aggregate.amount = self.amount
            aggregate.currency = self.currency
            aggregate.attempt = self.attempt
            aggregate.idempotency_key = self.idempotency_key
            aggregate.transfer_group = self.transfer_group
            aggregate.attempt_started_at = self.started_at
            aggregate.source_transaction = self.source_transaction
            aggregate.description = self.description
            aggregate.status = PayoutStatus.IN_FLIGHT
            aggregate.failure_code = None
            aggregate.failure_message = None

    class TransferFailed(Event):
        """Stripe definitely refused the attempt; nothing moved."""

        TOPIC = "payout_ledger:TransferFailed"
        attempt: int
        idempotency_key: str
        failure_code: str | None
        failure_message: str
        stripe_request_id: str | None

        def apply(self, aggregate: PayoutAggregate) -> None:
            aggregate.status = PayoutStatus.FAILED
            aggregate.failure_code = self.failure_code
            aggregate.failure_message = self.failure_message

    class TransferSucceeded(Event):
        """The attempt's transfer exists at Stripe."""

        TOPIC = "payout_ledger:TransferSucceeded"
        attempt: int
        idempotency_key: str
        transfer_id: str
        amount: int
        currency: str
        destination_account: str | None
        stripe_request_id: str | None
        simulated: bool

        def apply(self, aggregate: PayoutAggregate) -> None:
            aggregate.status = PayoutStatus.TRANSFERRED
            aggregate.transfer_id = self.transfer_id

    class Released(Event):
        """The event service's payment is released to the provider."""

        TOPIC = "payout_ledger:Released"
        transfer_id: str
        amount: int
        currency: str
        payee_user_id: str

        def apply(self, aggregate: PayoutAggregate) -> None:
            aggregate.status = PayoutStatus.RELEASED
            aggregate.released_at = self.timestamp

    class TransferReversed(Event):
        """Stripe reports the transfer reversed, in part or in whole."""

        TOPIC = "payout_ledger:TransferReversed"
        transfer_id: str
        amount_reversed: int
        currency: str
        stripe_event_id: str | None

        def apply(self, aggregate: PayoutAggregate) -> None:
            aggregate.amount_reversed = self.amount_reversed
            if self.amount_reversed >= aggregate.amount:
                aggregate.status = PayoutStatus.REVERSED

    class ReversalStarted(Event):
        """The platform claims a reversal attempt of the payout's transfer.

        ``reversed_before`` is what the ledger knew was reversed at the claim:
        the attempt's reversal is not in it, so ``reversed_before + amount``
        never counts a reversal twice.
        """

        TOPIC = "payout_ledger:ReversalStarted"
        reversal_attempt: int
        reference: str
        transfer_id: str
        amount: int
        currency: str
        reason: str
        idempotency_key: str
        reversed_before: int
        started_at: datetime

        def apply(self, aggregate: PayoutAggregate) -> None:
            aggregate.reversal_attempt = self.reversal_attempt
            aggregate.reversal_reference = self.reference
            aggregate.reversal_amount = self.amount
            aggregate.reversal_reason = self.reason
            aggregate.reversal_idempotency_key = self.idempotency_key
            aggregate.reversal_reversed_before = self.reversed_before
            aggregate.reversal_started_at = self.started_at
            aggregate.reversal_status = ReversalStatus.IN_FLIGHT
            aggregate.reversal_failure_code = None

    class ReversalSucceeded(Event):
        """The reversal attempt's reversal exists at Stripe.

        ``amount_reversed`` is the transfer's reversed total it implies: at
        least ``reversed_before + amount`` and never less than already known.
        """

        TOPIC = "payout_ledger:ReversalSucceeded"
        reversal_attempt: int
        reference: str
        idempotency_key: str
        reversal_id: str
        amount: int
        amount_reversed: int
        stripe_request_id: str | None

        def apply(self, aggregate: PayoutAggregate) -> None:
            aggregate.reversal_status = ReversalStatus.SUCCEEDED
            aggregate.reversals[self.reference] = self.reversal_id
            aggregate.reversal_amounts[self.reference] = self.amount
            aggregate.amount_reversed = max(aggregate.amount_reversed, self.amount_reversed)
            if aggregate.amount_reversed >= aggregate.amount:
                aggregate.status = PayoutStatus.REVERSED

    class ReversalFailed(Event):
        """Stripe definitely refused the reversal attempt; nothing moved."""

        TOPIC = "payout_ledger:ReversalFailed"
        reversal_attempt: int
        reference: str
        idempotency_key: str
        failure_code: str | None
        failure_message: str
        stripe_request_id: str | None

        def apply(self, aggregate: PayoutAggregate) -> None:
            aggregate.reversal_status = ReversalStatus.FAILED
            aggregate.reversal_failure_code = self.failure_code

    def __init__(self, event_service_id: str) -> None:
        self.event_service_id = event_service_id
        self.transfer_id: str | None = None
        self.released_at: datetime | None = None
        self.amount_reversed = 0
        self.source_transaction: str | None = None
        self.description: str | None = None
        self.reversal_attempt = 0
        """The latest reversal attempt's number (0: never reversed by the platform)."""
        self.reversal_status: ReversalStatus | None = None
        self.reversal_reference: str | None = None
        self.reversal_amount = 0
        self.reversal_reason: str | None = None
        self.reversal_idempotency_key: str | None = None
        self.reversal_reversed_before = 0
        self.reversal_started_at: datetime | None = None
        self.reversal_failure_code: str | None = None
        self.reversals: dict[str, str] = {}
        """The platform's succeeded reversals: the host's reference -> Stripe's reversal id."""
        self.reversal_amounts: dict[str, int] = {}
        """The platform's succeeded reversals: the host's reference -> amount."""
        # The remaining state is assigned by PayoutStarted.apply().
        self.provider_id: str
        self.payee_user_id: str
        self.destination_account: str | None
        self.amount: int
        self.currency: str
        self.attempt: int
        self.idempotency_key: str
        self.transfer_group: str
        self.attempt_started_at: datetime
        self.status: PayoutStatus
        self.failure_code: str | None
        self.failure_message: str | None

    @staticmethod
    def create_id(event_service_id: str) -> UUID:
        """The payout id of an event service: the same everywhere, forever."""
        return uuid5(PAYOUT_NAMESPACE, f"event-service:{event_service_id}")

    # Commands. The ledger decides whether a command is allowed; these methods
    # guard only the aggregate's own consistency.

    @classmethod
    def start(
        cls,
        *,
        event_service_id: str,
        provider_id: str,
        payee_user_id: str,
        destination_account: str | None,
        amount: int,
        currency: str,
        started_at: datetime,
        source_transaction: str | None = None,
        description: str | None = None,
        group: str | None = None,
    ) -> PayoutAggregate:
        """Claim the first attempt of a new payout.

        ``group`` is the host's own ``transfer_group`` (the one its PaymentIntent
        uses); without one it is ``event_service:{event_service_id}``.
        """
        return cls._create(
            cls.PayoutStarted,
            event_service_id=event_service_id,
            provider_id=provider_id,
            payee_user_id=payee_user_id,
            destination_account=destination_account,
            amount=amount,
            currency=currency,
            attempt=1,
            idempotency_key=idempotency_key(event_service_id, 1),
            transfer_group=group if group is not None else transfer_group(event_service_id),
            started_at=started_at,
            source_transaction=source_transaction,
            description=description,
        )

    def start_next_attempt(
        self,
        *,
        payee_user_id: str,
        destination_account: str | None,
        started_at: datetime,
        source_transaction: str | None = None,
        description: str | None = None,
    ) -> None:
        """Claim a new attempt after a definite failure (same amount and transfer group)."""
        if self.status is not PayoutStatus.FAILED:
            raise RuntimeError(f"cannot start an attempt while {self.status}")
        attempt = self.attempt + 1
        self.trigger_event(
            self.PayoutStarted,
            originator_topic=get_topic(type(self)),
            event_service_id=self.event_service_id,
            provider_id=self.provider_id,
            payee_user_id=payee_user_id,
            destination_account=destination_account,
            amount=self.amount,
            currency=self.currency,
            attempt=attempt,
            idempotency_key=idempotency_key(self.event_service_id, attempt),
            transfer_group=self.transfer_group,
            started_at=started_at,
            source_transaction=source_transaction,
            description=description,
        )

    def record_failure(self, *, code: str | None, message: str, request_id: str | None) -> None:
        """Record that Stripe definitely refused the current attempt."""
        self._require_in_flight()
        self.trigger_event(
            self.TransferFailed,
            attempt=self.attempt,
            idempotency_key=self.idempotency_key,
            failure_code=code,
            failure_message=message,
            stripe_request_id=request_id,
        )

    def record_transfer(
        self, *, transfer_id: str, request_id: str | None, simulated: bool = False
    ) -> None:
        """Record the current attempt's transfer, then release the payment."""
        self._require_in_flight()
        self.trigger_event(
            self.TransferSucceeded,
            attempt=self.attempt,
            idempotency_key=self.idempotency_key,
            transfer_id=transfer_id,
            amount=self.amount,
            currency=self.currency,
            destination_account=self.destination_account,
            stripe_request_id=request_id,
            simulated=simulated,
        )
        self.trigger_event(
            self.Released,
            transfer_id=transfer_id,
            amount=self.amount,
            currency=self.currency,
            payee_user_id=self.payee_user_id,
        )

    def record_reversal(
        self, *, transfer_id: str, amount_reversed: int, stripe_event_id: str | None
    ) -> bool:
        """Record the transfer's cumulative reversed amount; False if nothing new."""
        if transfer_id != self.transfer_id:
            raise RuntimeError(f"transfer {transfer_id} is not this payout's")
        if amount_reversed <= self.amount_reversed:
            return False  # an older or repeated report: reversals only add up
        self.trigger_event(
            self.TransferReversed,
            transfer_id=transfer_id,
            amount_reversed=amount_reversed,
            currency=self.currency,
            stripe_event_id=stripe_event_id,
        )
        return True

    def start_reversal(
        self, *, reference: str, amount: int, reason: str, started_at: datetime
    ) -> None:
        """Claim the next reversal attempt of the transfer (none may be in flight)."""
        if not self.is_paid or self.transfer_id is None:
            raise RuntimeError(f"cannot reverse a payout that is {self.status}")
        if self.reversal_status is ReversalStatus.IN_FLIGHT:
            raise RuntimeError("a reversal attempt is already in flight")
        if not 0 < amount <= self.amount - self.amount_reversed:
            raise RuntimeError(
                f"cannot reverse {amount}: {self.amount - self.amount_reversed} not yet reversed"
            )
        attempt = self.reversal_attempt + 1
        self.trigger_event(
            self.ReversalStarted,
            reversal_attempt=attempt,
            reference=reference,
            transfer_id=self.transfer_id,
            amount=amount,
            currency=self.currency,
            reason=reason,
            idempotency_key=reversal_idempotency_key(self.event_service_id, attempt),
            reversed_before=self.amount_reversed,
            started_at=started_at,
        )

    def record_reversal_success(self, *, reversal_id: str, request_id: str | None) -> None:
        """Record the in-flight reversal attempt's reversal."""
        self._require_reversal_in_flight()
        self.trigger_event(
            self.ReversalSucceeded,
            reversal_attempt=self.reversal_attempt,
            reference=self.reversal_reference,
            idempotency_key=self.reversal_idempotency_key,
            reversal_id=reversal_id,
            amount=self.reversal_amount,
            amount_reversed=max(
                self.amount_reversed, self.reversal_reversed_before + self.reversal_amount
            ),
            stripe_request_id=request_id,
        )

    def record_reversal_failure(
        self, *, code: str | None, message: str, request_id: str | None
    ) -> None:
        """Record that Stripe definitely refused the in-flight reversal attempt."""
        self._require_reversal_in_flight()
        self.trigger_event(
            self.ReversalFailed,
            reversal_attempt=self.reversal_attempt,
            reference=self.reversal_reference,
            idempotency_key=self.reversal_idempotency_key,
            failure_code=code,
            failure_message=message,
            stripe_request_id=request_id,
        )

    @property
    def reversible(self) -> int:
        """What the ledger knows is still not reversed of the transfer."""
        return self.amount - self.amount_reversed if self.is_paid else 0

    def _require_reversal_in_flight(self) -> None:
        if self.reversal_status is not ReversalStatus.IN_FLIGHT:
            raise RuntimeError(f"no reversal attempt in flight ({self.reversal_status})")

    @property
    def is_paid(self) -> bool:
        """The transfer exists and the payment is released (reversed or not)."""
        return self.status in (PayoutStatus.RELEASED, PayoutStatus.REVERSED)

    def _require_in_flight(self) -> None:
        if self.status is not PayoutStatus.IN_FLIGHT:
            raise RuntimeError(f"no attempt in flight (status {self.status})")


TRANSFER_CLAIMS = (
    PayoutAggregate.PayoutStarted.TOPIC,
    (PayoutAggregate.TransferFailed.TOPIC, PayoutAggregate.TransferSucceeded.TOPIC),
)
"""A transfer attempt's claim and its outcomes: a payout whose last of these is the
claim has an attempt in flight."""

REVERSAL_CLAIMS = (
    PayoutAggregate.ReversalStarted.TOPIC,
    (PayoutAggregate.ReversalSucceeded.TOPIC, PayoutAggregate.ReversalFailed.TOPIC),
)
"""A reversal attempt's claim and its outcomes."""

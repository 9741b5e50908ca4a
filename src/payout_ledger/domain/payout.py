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
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "PAYOUT_NAMESPACE",
    "PayoutAggregate",
    "PayoutStatus",
    "idempotency_key",
    "parse_idempotency_key",
]

PAYOUT_NAMESPACE = UUID("6f1c3c52-5d0e-4b8e-9a4f-3f0c2b7d9e11")
"""Namespace of the uuid5 payout ids; fixed forever, or ids would change."""


MAX_IDEMPOTENCY_KEY_LENGTH = 255
"""Stripe's limit on an idempotency key's length."""

_FIRST_ATTEMPT_PREFIX = "release_payment:"
_LATER_ATTEMPT = re.compile(r"release_payment\.attempt([1-9][0-9]*):")


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
        """

        TOPIC = "payout_ledger:PayoutStarted"
        class_version = 2
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

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.setdefault("started_at", state["timestamp"])

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

    def __init__(self, event_service_id: str) -> None:
        self.event_service_id = event_service_id
        self.transfer_id: str | None = None
        self.released_at: datetime | None = None
        self.amount_reversed = 0
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
    ) -> PayoutAggregate:
        """Claim the first attempt of a new payout."""
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
            transfer_group=transfer_group(event_service_id),
            started_at=started_at,
        )

    def start_next_attempt(
        self, *, payee_user_id: str, destination_account: str | None, started_at: datetime
    ) -> None:
        """Claim a new attempt after a definite failure."""
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

    @property
    def is_paid(self) -> bool:
        """The transfer exists and the payment is released (reversed or not)."""
        return self.status in (PayoutStatus.RELEASED, PayoutStatus.REVERSED)

    def _require_in_flight(self) -> None:
        if self.status is not PayoutStatus.IN_FLIGHT:
            raise RuntimeError(f"no attempt in flight (status {self.status})")

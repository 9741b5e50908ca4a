"""Stripe's transfer endpoint, in process, for the interleaving explorer.

It keeps Stripe's idempotency rules: a key is claimed when a request arrives;
a second request with the key while the first is executing gets a 409
(``idempotency_key_in_use``: an unknown outcome for the ledger); once the
first finished, the same key replays its answer for 24 hours; after that the
key is pruned and the same request *executes again*. So a second transfer for
a service is never hidden by the explorer: it shows up in ``transfers``.

Two I/O points: ``stripe.send`` (the request leaves the caller, after checking
its send window as a gateway does; crashing here means it was never sent) and
``stripe.commit`` (Stripe executes; crashing here means Stripe executed and the
caller died before reading the answer).
``stripe.list`` is the lookup by ``transfer_group``.

Reversals (``POST /v1/transfers/{id}/reversals``) follow the same key rules and
pass the same points: ``stripe.send``, ``stripe.commit`` (Stripe executes the
reversal, or refuses it and keeps the refusal under the key) and ``stripe.list``
(the transfer's reversals). Stripe refuses a reversal above what is not yet
reversed of the transfer, and one the connected account's balance cannot cover
(``balance_insufficient``); a reversal executed twice shows up in ``reversals``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from payout_ledger import (
    TransferOutcomeUnknown,
    TransferRequest,
    TransferResult,
    check_send_window,
)
from payout_ledger.errors import GatewayError, TransferDeclined
from payout_ledger.service.ports import (
    ReversalCreated,
    ReversalRequest,
    StripeReversal,
    StripeTransfer,
)
from payout_ledger.testing.memory import newest_matching
from tests.reliability.system import SimulatedCrash, Transfer

KEY_MAX_AGE = timedelta(hours=24)


class ModelClock:
    """A clock that moves only when told; the ledger and the model share it."""

    def __init__(self) -> None:
        self.moment = datetime(2030, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self.moment

    def monotonic(self) -> float:
        return self.moment.timestamp()

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


@dataclass
class _Key:
    created: datetime
    params: tuple[object, ...]
    answer: TransferResult | ReversalCreated | GatewayError | None = None


class ModelStripe:
    """Idempotent by key for 24 hours, then not; every execution is a transfer."""

    def __init__(self, clock: ModelClock, point: Callable[[str], bool]) -> None:
        self.clock = clock
        self.point = point
        self.transfers: list[StripeTransfer] = []
        self.sent: list[str] = []
        """The idempotency key of every request that reached Stripe."""
        self._keys: dict[str, _Key] = {}
        self.lose_next_answer = False
        self.refuse_next_request = False
        self.reversals: list[StripeReversal] = []
        self.account_balance: int | None = None
        """The connected account's available balance (None: enough for anything)."""

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        if self.point("stripe.send"):
            raise SimulatedCrash("before stripe.send")
        # A gateway checks the send window right before the bytes go out (the
        # documented assumption: a request then reaches Stripe within its timeout).
        check_send_window()
        if self.refuse_next_request:  # set-up: the request never reached Stripe
            self.refuse_next_request = False
            raise TransferOutcomeUnknown("timeout before Stripe")
        self.sent.append(request.idempotency_key)
        self._prune()
        params = _params(request)
        key = self._keys.get(request.idempotency_key)
        if key is not None:
            if key.answer is None:
                raise TransferOutcomeUnknown("409 idempotency_key_in_use", code="idempotency_error")
            if key.params != params:
                raise TransferOutcomeUnknown("idempotency_error", code="idempotency_error")
            assert isinstance(key.answer, TransferResult)
            return key.answer  # replayed
        key = _Key(self.clock.now(), params)
        self._keys[request.idempotency_key] = key
        crash = self.point("stripe.commit")
        transfer = StripeTransfer(
            id=f"tr_model_{len(self.transfers) + 1}",
            amount=request.amount,
            currency=request.currency,
            destination=request.destination,
            transfer_group=request.transfer_group,
            metadata=dict(request.metadata),
            created=int(self.clock.now().timestamp()),
        )
        self.transfers.append(transfer)
        answer = key.answer = TransferResult(transfer_id=transfer.id)
        if crash:
            raise SimulatedCrash("after stripe.commit")
        if self.lose_next_answer:  # set-up: committed, the answer was lost
            self.lose_next_answer = False
            raise TransferOutcomeUnknown("response lost")
        return answer

    def create_reversal(self, request: ReversalRequest) -> ReversalCreated:
        if self.point("stripe.send"):
            raise SimulatedCrash("before stripe.send")
        check_send_window()
        if self.refuse_next_request:
            self.refuse_next_request = False
            raise TransferOutcomeUnknown("timeout before Stripe")
        self.sent.append(request.idempotency_key)
        self._prune()
        params = _reversal_params(request)
        key = self._keys.get(request.idempotency_key)
        if key is not None:
            if key.answer is None:
                raise TransferOutcomeUnknown("409 idempotency_key_in_use", code="idempotency_error")
            if key.params != params:
                raise TransferOutcomeUnknown("idempotency_error", code="idempotency_error")
            return _replayed(key.answer)
        key = _Key(self.clock.now(), params)
        self._keys[request.idempotency_key] = key
        crash = self.point("stripe.commit")
        key.answer = self._reverse(request)
        if crash:
            raise SimulatedCrash("after stripe.commit")
        if self.lose_next_answer:
            self.lose_next_answer = False
            raise TransferOutcomeUnknown("response lost")
        return _replayed(key.answer)

    def _reverse(self, request: ReversalRequest) -> ReversalCreated | GatewayError:
        """Execute a reversal, or the refusal Stripe keeps under the key."""
        [transfer] = [t for t in self.transfers if t.id == request.transfer_id]
        remaining = transfer.amount - self.amount_reversed(transfer.id)
        if request.amount > remaining:
            return TransferDeclined(
                f"Reversal amount ({request.amount}) is greater than what is not yet "
                f"reversed ({remaining})"
            )
        if self.account_balance is not None:
            if self.account_balance < request.amount:
                return TransferDeclined(
                    "Insufficient funds in the destination account",
                    code="balance_insufficient",
                )
            self.account_balance -= request.amount
        reversal = StripeReversal(
            id=f"trr_model_{len(self.reversals) + 1}",
            transfer=transfer.id,
            amount=request.amount,
            currency=request.currency,
            metadata=dict(request.metadata),
            created=int(self.clock.now().timestamp()),
        )
        self.reversals.append(reversal)
        return ReversalCreated(reversal_id=reversal.id)

    def list_reversals(self, transfer_id: str) -> list[StripeReversal]:
        if self.point("stripe.list"):
            raise SimulatedCrash("before stripe.list")
        return [r for r in reversed(self.reversals) if r.transfer == transfer_id]

    def amount_reversed(self, transfer_id: str) -> int:
        return sum(r.amount for r in self.reversals if r.transfer == transfer_id)

    def list_transfers(
        self,
        *,
        transfer_group: str | None = None,
        created_gte: int | None = None,
        created_lt: int | None = None,
    ) -> list[StripeTransfer]:
        if self.point("stripe.list"):
            raise SimulatedCrash("before stripe.list")
        return newest_matching(
            self.transfers,
            transfer_group=transfer_group,
            created_gte=created_gte,
            created_lt=created_lt,
        )

    def audit_transfers(self) -> list[Transfer]:
        return [
            Transfer(
                id=t.id,
                event_service_id=t.metadata.get("event_service_id"),
                attempt=t.metadata.get("attempt"),
                payout_id=t.metadata.get("payout_id"),
                amount=t.amount,
                currency=t.currency,
                destination=t.destination,
            )
            for t in self.transfers
        ]

    def _prune(self) -> None:
        now = self.clock.now()
        for name, key in list(self._keys.items()):
            if key.answer is not None and now - key.created > KEY_MAX_AGE:
                del self._keys[name]


def _replayed(answer: object) -> ReversalCreated:
    if isinstance(answer, GatewayError):
        raise answer
    assert isinstance(answer, ReversalCreated)
    return answer


def _reversal_params(request: ReversalRequest) -> tuple[object, ...]:
    return (
        "reversal",
        request.transfer_id,
        request.amount,
        request.currency,
        tuple(sorted(request.metadata.items())),
    )


def _params(request: TransferRequest) -> tuple[object, ...]:
    return (
        request.amount,
        request.currency,
        request.destination,
        request.transfer_group,
        tuple(sorted(request.metadata.items())),
    )

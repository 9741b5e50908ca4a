"""Reverse: take (part of) a paid transfer back, exactly once, as a release pays.

A refund after a payout leaves the platform out of pocket unless the transfer
is reversed. A reversal is proved the way a release is:

* the claim is a saved ``ReversalStarted``: two callers cannot both save the
  payout's next version, so only one of them asks Stripe, and only one
  reversal of a payout is in flight at a time;
* each reversal attempt has its own idempotency key
  (``reverse_payment.attempt{N}:{event_service_id}``), sent inside a send
  window as a transfer's is;
* an unknown outcome stays in flight; a resume looks the reversal up on the
  transfer first (by the attempt's metadata), records it if Stripe has it, and
  else sends the same request with the same key inside a new window: past
  Stripe's 24-hour key window too, as a release's resume does
  (docs/concepts.md gives the argument);
* the amount claimed never exceeds what the ledger knows is not yet reversed,
  and Stripe refuses more than what it knows is not, so nothing is reversed
  twice; ``reversed_before + amount`` never counts a reversal twice either,
  whatever ``transfer.reversed`` webhooks report meanwhile.

A host names each partial reversal with a ``reference`` (its refund's id): a
retry with the same reference is the same reversal, never a second one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from payout_ledger.adapters import telemetry
from payout_ledger.adapters.log import claims_without_outcome
from payout_ledger.domain.money import Money
from payout_ledger.domain.payout import (
    FULL_REVERSAL,
    REVERSAL_CLAIMS,
    PayoutAggregate,
    ReversalStatus,
)
from payout_ledger.errors import (
    ConfigurationError,
    GatewayError,
    InvalidRequestError,
    LedgerBusyError,
    PayoutNotFoundError,
    ReversalConflictError,
    ReversalRefusedError,
    TransferDeclined,
    TransferNotExecuted,
)
from payout_ledger.service.attempts import SIMULATED_PREFIX
from payout_ledger.service.core import LedgerCore
from payout_ledger.service.ports import (
    MAX_METADATA_VALUE_LENGTH,
    ReversalCreated,
    ReversalGateway,
    ReversalRequest,
    SendWindow,
    StripeReversal,
    sending_within,
)
from payout_ledger.service.requests import (
    ReversalOutcome,
    ReversalResult,
    checked_identifier,
)

__all__ = ["Reversing"]

logger = logging.getLogger("payout_ledger")


class Reversing(LedgerCore):
    """Reversing a paid transfer: the claim, then the reversal, then its outcome."""

    @telemetry.traced("payout_ledger.reverse", lambda result: _described(result))
    def reverse_payment(
        self,
        event_service_id: str,
        amount: Money | int | None = None,
        *,
        reason: str = "requested_by_customer",
        reference: str | None = None,
    ) -> ReversalResult:
        """Reverse the service's transfer, in whole (``amount=None``) or in part, once.

        ``amount`` is minor units of the payout's currency (or a
        [`Money`][payout_ledger.Money] in it). ``reference`` is the host's id of
        the refund: a partial reversal needs one, so that a retry is the same
        reversal; a full reversal without one is the reference ``"full"``.
        ``reason`` is kept in the ledger and in the reversal's metadata.

        Raises [`PayoutNotFoundError`][payout_ledger.PayoutNotFoundError],
        [`ReversalRefusedError`][payout_ledger.ReversalRefusedError] (not paid, more
        than is not yet reversed, a partial reversal without a reference),
        [`ReversalConflictError`][payout_ledger.ReversalConflictError] (the
        reference was used for another amount) or
        [`InvalidRequestError`][payout_ledger.InvalidRequestError] before anything
        is recorded; every other outcome is a
        [`ReversalResult`][payout_ledger.ReversalResult]. A reversal Stripe refuses
        because the connected account lacks the balance is ``failed`` with
        ``error_code="balance_insufficient"``: the platform must recover the
        money another way, or ask again later with the same reference.
        """
        event_service_id = checked_identifier(event_service_id)
        ref = _reference(reference, amount)
        reason = _reason(reason)
        self._reversal_gateway()  # a gateway that cannot reverse is refused before any claim
        payout = self._load(event_service_id)
        if payout is None:
            raise PayoutNotFoundError(event_service_id)
        for _ in range(self.settings.claim_attempts):
            answer = self._reversal_answer(payout, ref, amount)
            if answer is not None:
                return answer
            wanted = _minor_units_of(payout, amount)
            payout.start_reversal(
                reference=ref, amount=wanted, reason=reason, started_at=self._clock.now()
            )
            window = self._open_window()
            try:
                self.save(payout)
            except IntegrityError:
                payout = self.get_payout(event_service_id)
                logger.info(
                    "reversal of %s lost the claim race",
                    event_service_id,
                    extra=telemetry.extras(event_service_id=event_service_id, reference=ref),
                )
                continue
            return self._conclude_reversal(payout, self._send_reversal(payout, window))
        raise LedgerBusyError(event_service_id, self.settings.claim_attempts)

    def resume_reversal(self, event_service_id: str) -> ReversalResult:
        """Settle the service's reversal left in flight, never reversing twice.

        Stripe is asked first: the transfer's reversals are looked up by the
        attempt's metadata. If Stripe has it, it is recorded; if not, the same
        request is sent again with the attempt's own key, inside a send window
        that opened before the lookup.
        """
        return self._resume_reversal(self.get_payout(checked_identifier(event_service_id)))

    def resume_reversals_in_flight(self) -> list[ReversalResult]:
        """Settle every reversal left in flight (safe at any time, from any process)."""
        results = []
        for payout_id in self._reversal_in_flight_ids():
            try:
                results.append(self._resume_reversal(self.get_payout_by_id(payout_id)))
            except ConfigurationError:
                raise
            except Exception as exc:
                logger.exception(
                    "reversal of payout %s could not be resumed",
                    payout_id,
                    extra=telemetry.extras(
                        payout_id=str(payout_id),
                        outcome=ReversalOutcome.OUTCOME_UNKNOWN.value,
                        error_code="cannot_resume",
                    ),
                )
                results.append(
                    ReversalResult(
                        event_service_id=f"(payout {payout_id})",
                        payout_id=payout_id,
                        outcome=ReversalOutcome.OUTCOME_UNKNOWN,
                        reference="",
                        amount=0,
                        currency="",
                        error_code="cannot_resume",
                        error_message=f"{type(exc).__name__}: {exc}"[:500],
                        detail="cannot resume",
                    )
                )
        return results

    def reversals_in_flight(self) -> list[str]:
        """Event services whose latest reversal attempt has no outcome yet."""
        return sorted(
            self.get_payout_by_id(payout_id).event_service_id
            for payout_id in self._reversal_in_flight_ids()
        )

    # -- deciding ----------------------------------------------------------

    def _reversal_answer(
        self, payout: PayoutAggregate, ref: str, amount: Money | int | None
    ) -> ReversalResult | None:
        """The answer without a new claim, or None when a new attempt may be claimed."""
        if not payout.is_paid or payout.transfer_id is None:
            raise ReversalRefusedError(
                f"the payout of {payout.event_service_id!r} is {payout.status}, not paid: "
                "there is no transfer to reverse"
            )
        if ref in payout.reversals:
            recorded = payout.reversal_amounts[ref]
            if amount is not None and _minor_units_of(payout, amount) != recorded:
                raise ReversalConflictError(
                    payout.event_service_id, ref, recorded, _minor_units_of(payout, amount)
                )
            return _result(payout, ReversalOutcome.ALREADY_REVERSED, ref=ref, amount=recorded)
        if payout.reversal_status is ReversalStatus.IN_FLIGHT:
            if payout.reversal_reference == ref:
                return self._resume_reversal(payout)
            return _result(
                payout,
                ReversalOutcome.IN_PROGRESS,
                detail=f"reversal {payout.reversal_reference!r} is in flight",
            )
        if amount is None and payout.reversible == 0:
            return _result(
                payout,
                ReversalOutcome.ALREADY_REVERSED,
                ref=ref,
                amount=0,
                detail="the whole transfer is reversed",
            )
        wanted = _minor_units_of(payout, amount)
        if wanted > payout.reversible:
            raise ReversalRefusedError(
                f"cannot reverse {wanted} {payout.currency} of {payout.event_service_id!r}: "
                f"{payout.reversible} is not yet reversed"
            )
        return None

    # -- sending -----------------------------------------------------------

    def _reversal_gateway(self) -> ReversalGateway | None:
        if self._gateway is None or not self.settings.stripe_enabled:
            return None
        if not isinstance(self._gateway, ReversalGateway):
            raise ConfigurationError(
                "reversals need a gateway with create_reversal and list_reversals "
                "(ReversalGateway); StripeTransferGateway has them"
            )
        return self._gateway

    def _reversal_request(self, payout: PayoutAggregate) -> ReversalRequest:
        return ReversalRequest(
            transfer_id=cast(str, payout.transfer_id),
            amount=payout.reversal_amount,
            currency=payout.currency,
            idempotency_key=cast(str, payout.reversal_idempotency_key),
            metadata={
                "event_service_id": payout.event_service_id,
                "payout_id": str(payout.id),
                "reversal_attempt": str(payout.reversal_attempt),
                "reference": cast(str, payout.reversal_reference),
                "reason": cast(str, payout.reversal_reason),
            },
        )

    def _send_reversal(
        self, payout: PayoutAggregate, window: SendWindow
    ) -> ReversalCreated | GatewayError:
        gateway = self._reversal_gateway()
        if gateway is None or cast(str, payout.transfer_id).startswith(SIMULATED_PREFIX):
            # Stripe disabled, or a simulated transfer: nothing moves.
            return ReversalCreated(
                reversal_id=f"{SIMULATED_PREFIX}trr_{payout.id.hex}_{payout.reversal_attempt}"
            )
        try:
            request = self._reversal_request(payout)
            window.check()
            with sending_within(window):
                return gateway.create_reversal(request)
        except GatewayError as exc:
            return exc

    def _conclude_reversal(
        self,
        payout: PayoutAggregate,
        outcome: ReversalCreated | GatewayError,
        detail: str | None = None,
    ) -> ReversalResult:
        if isinstance(outcome, ReversalCreated):
            created = outcome

            def record(p: PayoutAggregate) -> None:
                p.record_reversal_success(
                    reversal_id=created.reversal_id, request_id=created.request_id
                )

            return self._save_reversal_outcome(
                payout, record, ReversalOutcome.REVERSED, detail=detail
            )
        if isinstance(outcome, TransferDeclined):
            declined = outcome

            def record(p: PayoutAggregate) -> None:
                p.record_reversal_failure(
                    code=declined.code, message=declined.message, request_id=declined.request_id
                )

            return self._save_reversal_outcome(
                payout, record, ReversalOutcome.FAILED, declined, detail
            )
        if isinstance(outcome, TransferNotExecuted):
            return _result(payout, ReversalOutcome.NOT_EXECUTED, outcome, detail=detail)
        stored = self._load(payout.event_service_id)
        if stored is not None and not _in_flight(stored, payout.reversal_attempt):
            return _settled(stored, "settled meanwhile")
        logger.warning(
            "reversal outcome unknown for %s (reversal attempt %d); left in flight",
            payout.event_service_id,
            payout.reversal_attempt,
            extra=telemetry.extras(
                event_service_id=payout.event_service_id,
                payout_id=str(payout.id),
                attempt=payout.reversal_attempt,
                reference=payout.reversal_reference,
                outcome=ReversalOutcome.OUTCOME_UNKNOWN.value,
                error_code=getattr(outcome, "code", None),
                stripe_request_id=getattr(outcome, "request_id", None),
            ),
        )
        return _result(payout, ReversalOutcome.OUTCOME_UNKNOWN, outcome, detail=detail)

    def _save_reversal_outcome(
        self,
        payout: PayoutAggregate,
        record: Callable[[PayoutAggregate], None],
        outcome: ReversalOutcome,
        error: GatewayError | None = None,
        detail: str | None = None,
    ) -> ReversalResult:
        """Record the attempt's outcome; a resume's outcome saved first wins.

        A save can also lose to an unrelated event (a ``transfer.reversed``
        webhook's report): the attempt is then still in flight in the store,
        and the outcome is recorded on top of what was stored.
        """
        attempt = payout.reversal_attempt
        record(payout)
        for _ in range(self.settings.claim_attempts):
            try:
                self.save(payout)
            except IntegrityError:
                payout = self.get_payout(payout.event_service_id)
                if not _in_flight(payout, attempt):
                    return _settled(payout, "settled meanwhile")
                record(payout)
                continue
            return _result(payout, outcome, error, detail=detail)
        raise LedgerBusyError(payout.event_service_id, self.settings.claim_attempts)

    # -- resuming ----------------------------------------------------------

    @telemetry.traced("payout_ledger.resume_reversal", lambda result: _described(result))
    def _resume_reversal(self, payout: PayoutAggregate) -> ReversalResult:
        if payout.reversal_status is not ReversalStatus.IN_FLIGHT:
            if payout.reversal_status is None:
                raise ReversalRefusedError(
                    f"the payout of {payout.event_service_id!r} has no reversal to resume"
                )
            return _settled(payout, "nothing in flight")
        gateway = self._reversal_gateway()
        if gateway is None or cast(str, payout.transfer_id).startswith(SIMULATED_PREFIX):
            return self._conclude_reversal(
                payout, self._send_reversal(payout, self._open_window()), detail="simulated"
            )
        window = self._open_window()
        attempt = payout.reversal_attempt
        try:
            found = self._find_reversals(gateway, payout)
        except GatewayError as exc:
            return _result(payout, ReversalOutcome.OUTCOME_UNKNOWN, exc, detail="lookup failed")
        # Decide on the store as it is after the lookup, and only for the attempt
        # looked up: if it was settled and the next one claimed meanwhile, what was
        # found (or not) says nothing about the new attempt.
        payout = self.get_payout_by_id(payout.id)
        if not _in_flight(payout, attempt):
            return _settled(payout, "settled meanwhile")
        if found:
            reversal = found[0]
            if reversal.amount != payout.reversal_amount or reversal.currency != payout.currency:
                return _result(
                    payout,
                    ReversalOutcome.OUTCOME_UNKNOWN,
                    detail=f"Stripe's reversal {reversal.id} differs from the claim "
                    f"({reversal.amount} {reversal.currency})",
                )
            return self._conclude_reversal(
                payout, ReversalCreated(reversal_id=reversal.id), detail="found at Stripe"
            )
        return self._conclude_reversal(
            payout, self._send_reversal(payout, window), detail="retried with the same key"
        )

    def _find_reversals(
        self, gateway: ReversalGateway, payout: PayoutAggregate
    ) -> list[StripeReversal]:
        return [
            r
            for r in gateway.list_reversals(cast(str, payout.transfer_id))
            if r.metadata.get("payout_id") == str(payout.id)
            and r.metadata.get("reversal_attempt") == str(payout.reversal_attempt)
        ]

    def _reversal_in_flight_ids(self) -> list[UUID]:
        return claims_without_outcome(self, *REVERSAL_CLAIMS)


def _reference(reference: object, amount: object) -> str:
    if reference is None:
        if amount is not None:
            raise ReversalRefusedError(
                "a partial reversal needs a reference (the host's id of the refund), "
                "so that a retry cannot reverse twice"
            )
        return FULL_REVERSAL
    return checked_identifier(reference, "reference")


def _reason(reason: object) -> str:
    if (
        not isinstance(reason, str)
        or not 0 < len(reason) <= MAX_METADATA_VALUE_LENGTH
        or not reason.isprintable()
    ):
        raise InvalidRequestError(f"reason: 1-{MAX_METADATA_VALUE_LENGTH} printable characters")
    return reason


def _minor_units_of(payout: PayoutAggregate, amount: Money | int | None) -> int:
    if amount is None:
        return payout.reversible
    if isinstance(amount, Money):
        if amount.currency != payout.currency:
            raise ReversalRefusedError(
                f"the payout of {payout.event_service_id!r} is in {payout.currency}, "
                f"not {amount.currency}"
            )
        return amount.amount
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
        raise InvalidRequestError("amount: a positive number of minor units, a Money or None")
    return amount


def _result(
    payout: PayoutAggregate,
    outcome: ReversalOutcome,
    error: GatewayError | None = None,
    *,
    ref: str | None = None,
    amount: int | None = None,
    detail: str | None = None,
) -> ReversalResult:
    current = ref is None or ref == payout.reversal_reference
    return ReversalResult(
        event_service_id=payout.event_service_id,
        payout_id=payout.id,
        outcome=outcome,
        reference=ref if ref is not None else payout.reversal_reference or "",
        amount=amount if amount is not None else payout.reversal_amount,
        currency=payout.currency,
        reversal_id=payout.reversals.get(ref or payout.reversal_reference or ""),
        transfer_id=payout.transfer_id,
        attempt=payout.reversal_attempt if current else None,
        idempotency_key=payout.reversal_idempotency_key if current else None,
        amount_reversed=payout.amount_reversed,
        error_code=getattr(error, "code", None),
        error_message=getattr(error, "message", None),
        stripe_request_id=getattr(error, "request_id", None),
        detail=detail,
    )


_OUTCOME_OF_STATUS = {
    ReversalStatus.SUCCEEDED: ReversalOutcome.REVERSED,
    ReversalStatus.FAILED: ReversalOutcome.FAILED,
    ReversalStatus.IN_FLIGHT: ReversalOutcome.IN_PROGRESS,
}


def _in_flight(payout: PayoutAggregate, attempt: int) -> bool:
    """Whether reversal attempt ``attempt`` is still the payout's, without an outcome."""
    return payout.reversal_status is ReversalStatus.IN_FLIGHT and payout.reversal_attempt == attempt


def _settled(payout: PayoutAggregate, detail: str) -> ReversalResult:
    return _result(
        payout, _OUTCOME_OF_STATUS[cast(ReversalStatus, payout.reversal_status)], detail=detail
    )


def _described(result: ReversalResult) -> dict[str, str | int | None]:
    """A reversal's span attributes: its outcome, never an id or a reference."""
    return {
        "outcome": result.outcome.value,
        "attempt": result.attempt,
        "currency": result.currency or None,
        "error_code": telemetry.label(result.error_code, missing="") or None,
    }

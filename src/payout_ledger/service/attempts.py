"""One attempt's transfer: the request sent, the gateway called, the outcome recorded.

A release and a resume both end here: the request is built only from the
recorded ``PayoutStarted`` (so a retry sends what Stripe stored under the
key), sent inside the attempt's send window, and its outcome saved; an
outcome someone else saved first wins.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from eventsourcing.persistence import (
    IntegrityError,
)

from payout_ledger.adapters import telemetry
from payout_ledger.domain.payout import PayoutAggregate, PayoutStatus
from payout_ledger.errors import (
    DestinationUnpayable,
    GatewayError,
    PayoutLedgerError,
    TransferDeclined,
    TransferNotExecuted,
)
from payout_ledger.service.payability import Payability, provider_action_required
from payout_ledger.service.ports import (
    SendWindow,
    StripeTransfer,
    TransferRequest,
    TransferResult,
    sending_within,
)
from payout_ledger.service.requests import (
    ReleaseOutcome,
    ReleaseResult,
)

__all__ = [
    "OUTCOME_OF_STATUS",
    "SIMULATED_PREFIX",
    "Attempts",
    "claim_differences",
    "release_result",
    "simulated_transfer",
]

logger = logging.getLogger("payout_ledger")

SIMULATED_PREFIX = "sim_"
"""Transfer ids of simulated transfers (Stripe disabled) start with it."""


OUTCOME_OF_STATUS = {
    PayoutStatus.RELEASED: ReleaseOutcome.RELEASED,
    PayoutStatus.REVERSED: ReleaseOutcome.RELEASED,
    PayoutStatus.TRANSFERRED: ReleaseOutcome.IN_PROGRESS,
    PayoutStatus.IN_FLIGHT: ReleaseOutcome.IN_PROGRESS,
    PayoutStatus.FAILED: ReleaseOutcome.FAILED,
}


class Attempts(Payability):
    """Sending an attempt's transfer and recording its outcome (shared by release and resume)."""

    def _transfer_request(self, payout: PayoutAggregate) -> TransferRequest:
        # Everything here comes from the recorded PayoutStarted, so a retry of
        # the attempt sends exactly the parameters Stripe stored under the key.
        if payout.destination_account is None:
            raise PayoutLedgerError(
                f"payout of {payout.event_service_id!r} was claimed without a connected "
                "account (Stripe was disabled): it cannot be sent to Stripe"
            )
        return TransferRequest(
            amount=payout.amount,
            currency=payout.currency,
            destination=payout.destination_account,
            idempotency_key=payout.idempotency_key,
            transfer_group=payout.transfer_group,
            metadata={
                "event_service_id": payout.event_service_id,
                "payout_id": str(payout.id),
                "attempt": str(payout.attempt),
            },
            source_transaction=payout.source_transaction,
            description=payout.description,
        )

    def _call_gateway(
        self, payout: PayoutAggregate, window: SendWindow
    ) -> TransferResult | GatewayError:
        if self._gateway is None or not self.settings.stripe_enabled:
            return simulated_transfer(payout)
        try:
            request = self._transfer_request(payout)
            window.check()
            with sending_within(window):
                return self._gateway.create_transfer(request)
        except GatewayError as exc:
            return exc

    async def _call_gateway_async(
        self, payout: PayoutAggregate, window: SendWindow
    ) -> TransferResult | GatewayError:
        if self._gateway is None or not self.settings.stripe_enabled:
            return simulated_transfer(payout)
        create_async = getattr(self._gateway, "create_transfer_async", None)
        try:
            request = self._transfer_request(payout)
            window.check()
            with sending_within(window):
                if create_async is not None:
                    return cast(TransferResult, await create_async(request))
                return await asyncio.to_thread(self._gateway.create_transfer, request)
        except GatewayError as exc:
            return exc

    def _find_transfers(self, payout: PayoutAggregate) -> list[StripeTransfer]:
        if self._gateway is None:
            return []
        return [
            t
            for t in self._gateway.list_transfers(transfer_group=payout.transfer_group)
            if t.metadata.get("payout_id") == str(payout.id)
        ]

    def _conclude(
        self,
        payout: PayoutAggregate,
        outcome: TransferResult | GatewayError,
        detail: str | None = None,
    ) -> ReleaseResult:
        if isinstance(outcome, TransferResult):
            payout.record_transfer(
                transfer_id=outcome.transfer_id,
                request_id=outcome.request_id,
                simulated=outcome.transfer_id.startswith(SIMULATED_PREFIX),
            )
            return self._save_outcome(payout, ReleaseOutcome.RELEASED, detail=detail)
        if isinstance(outcome, DestinationUnpayable):
            # A definite refusal like any other, and the account's report, in one save.
            saved, payability = self._save_refusal(payout, outcome)
            if payability is None:
                return release_result(saved, OUTCOME_OF_STATUS[saved.status], outcome, detail)
            return provider_action_required(
                saved.event_service_id,
                payability,
                saved,
                request_id=outcome.request_id,
                detail=detail or f"Stripe refused attempt {saved.attempt} ({outcome.code})",
            )
        if isinstance(outcome, TransferDeclined):
            payout.record_failure(
                code=outcome.code, message=outcome.message, request_id=outcome.request_id
            )
            return self._save_outcome(payout, ReleaseOutcome.FAILED, outcome, detail)
        if isinstance(outcome, TransferNotExecuted):
            return release_result(payout, ReleaseOutcome.NOT_EXECUTED, outcome, detail)
        stored = self._load(payout.event_service_id)
        if stored is not None and stored.status is not PayoutStatus.IN_FLIGHT:
            # Another process (a resume, a webhook) settled it while we waited.
            return release_result(
                stored, OUTCOME_OF_STATUS[stored.status], detail="settled meanwhile"
            )
        logger.warning(
            "transfer outcome unknown for %s (attempt %d); payout left in flight",
            payout.event_service_id,
            payout.attempt,
            extra=telemetry.extras(
                event_service_id=payout.event_service_id,
                payout_id=str(payout.id),
                attempt=payout.attempt,
                outcome=ReleaseOutcome.OUTCOME_UNKNOWN.value,
                error_code=getattr(outcome, "code", None),
                stripe_request_id=getattr(outcome, "request_id", None),
            ),
        )
        return release_result(payout, ReleaseOutcome.OUTCOME_UNKNOWN, outcome, detail)

    def _save_outcome(
        self,
        payout: PayoutAggregate,
        outcome: ReleaseOutcome,
        error: Exception | None = None,
        detail: str | None = None,
    ) -> ReleaseResult:
        try:
            self.save(payout)
        except IntegrityError:
            # Someone settled this attempt first (a resume or a webhook). The
            # stored outcome wins; ours is dropped, never written twice.
            stored = self.get_payout(payout.event_service_id)
            ours, theirs = payout.transfer_id, stored.transfer_id
            if ours is not None and theirs is not None and ours != theirs:
                # Two transfers for one payout: never expected, always reported.
                logger.error(
                    "DUPLICATE TRANSFER for %s: Stripe answered %s, the ledger recorded %s; "
                    "run payout-ledger reconcile",
                    payout.event_service_id,
                    ours,
                    theirs,
                    extra=telemetry.extras(
                        event_service_id=payout.event_service_id,
                        payout_id=str(payout.id),
                        attempt=payout.attempt,
                        transfer_id=ours,
                        recorded_transfer_id=theirs,
                    ),
                )
                return release_result(
                    stored,
                    OUTCOME_OF_STATUS[stored.status],
                    detail=f"duplicate transfer {ours}: reconcile",
                )
            return release_result(stored, OUTCOME_OF_STATUS[stored.status])
        return release_result(payout, outcome, error, detail)


def claim_differences(payout: PayoutAggregate, transfer: StripeTransfer) -> str | None:
    """What a transfer at Stripe has that the payout's current claim does not, or None.

    A transfer settles a payout only when it is of the claimed attempt and has
    the claimed amount, currency and destination.
    """
    claimed = {
        "attempt": str(payout.attempt),
        "amount": payout.amount,
        "currency": payout.currency,
        "destination": payout.destination_account,
        "payout_id": str(payout.id),
    }
    reported = {
        "attempt": transfer.metadata.get("attempt"),
        "amount": transfer.amount,
        "currency": transfer.currency,
        "destination": transfer.destination,
        "payout_id": transfer.metadata.get("payout_id"),
    }
    differing = [
        f"{name} {reported[name]!r} (claimed {value!r})"
        for name, value in claimed.items()
        if reported[name] != value
    ]
    return ", ".join(differing) or None


def release_result(
    payout: PayoutAggregate,
    outcome: ReleaseOutcome,
    error: Exception | None = None,
    detail: str | None = None,
) -> ReleaseResult:
    code = getattr(error, "code", None)
    return ReleaseResult(
        event_service_id=payout.event_service_id,
        payout_id=payout.id,
        outcome=outcome,
        transfer_id=payout.transfer_id,
        attempt=payout.attempt,
        idempotency_key=payout.idempotency_key,
        error_code=code,
        error_message=getattr(error, "message", None),
        stripe_request_id=getattr(error, "request_id", None),
        detail=detail,
    )


def simulated_transfer(payout: PayoutAggregate) -> TransferResult:
    # Stripe disabled (local development): nothing moves.
    return TransferResult(transfer_id=f"{SIMULATED_PREFIX}{payout.id.hex}_{payout.attempt}")

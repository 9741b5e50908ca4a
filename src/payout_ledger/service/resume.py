"""Resume: settle an attempt left in flight (a crash, a timeout, a lost answer).

Stripe is asked first, by the attempt's ``transfer_group``; what it has is
recorded if it is the claim, else the same request is sent again with the
attempt's own key inside a send window. docs/concepts.md gives the argument.
"""

from __future__ import annotations

import logging
from uuid import UUID

from payout_ledger.adapters import telemetry
from payout_ledger.adapters.log import claims_without_outcome
from payout_ledger.adapters.store import first_cause
from payout_ledger.domain.payout import TRANSFER_CLAIMS, PayoutAggregate, PayoutStatus
from payout_ledger.errors import (
    ConfigurationError,
    GatewayError,
    LedgerIntegrityError,
)
from payout_ledger.service.attempts import (
    OUTCOME_OF_STATUS,
    Attempts,
    claim_differences,
    release_result,
    simulated_transfer,
)
from payout_ledger.service.requests import (
    ReleaseOutcome,
    ReleaseResult,
)

__all__ = ["Resuming"]

logger = logging.getLogger("payout_ledger")


class Resuming(Attempts):
    """Settling payouts left in flight, without ever starting a new attempt."""

    def resume_in_flight(self) -> list[ReleaseResult]:
        """Settle every payout left in flight (a crash, a timeout, a lost response).

        See [`resume`][payout_ledger.PayoutLedger.resume]. Safe to run at any
        time, from any number of processes. Each payout is settled on its own:
        one that cannot be (unreadable, or claimed without a destination) is
        answered ``outcome_unknown`` with ``error_code="cannot_resume"`` and
        logged, and the others go on.
        """
        return [self._resume_isolated(payout_id) for payout_id in self._in_flight_ids()]

    def resume(self, event_service_id: str) -> ReleaseResult:
        """Settle one in-flight payout without ever making a second transfer.

        Stripe is asked first: the attempt's transfer is looked up by its
        ``transfer_group`` and metadata. If Stripe has it, it is recorded. If
        not, the same request is sent again with the attempt's own key, inside
        a send window that opened before the lookup: Stripe makes the transfer
        now, or answers with the one it made meanwhile. A resume never starts a
        new attempt and never relies on any host's clock (docs/concepts.md
        gives the argument). The payout is read again after the lookup, so a
        resume that raced another one answers what the store now says.
        """
        return self._resume(self.get_payout(event_service_id))

    def in_flight(self) -> list[str]:
        """Event services whose payout has an attempt without an outcome.

        Reads the log once, in pages, keeping only each payout's last outcome.
        A payout whose events cannot be read is logged and left out (see
        [`resume_in_flight`][payout_ledger.PayoutLedger.resume_in_flight], which
        reports it).
        """
        services = []
        for payout_id in self._in_flight_ids():
            try:
                services.append(self.get_payout_by_id(payout_id).event_service_id)
            except Exception:
                logger.exception(
                    "in-flight payout %s cannot be read",
                    payout_id,
                    extra=telemetry.extras(payout_id=str(payout_id)),
                )
        return sorted(services)

    def _in_flight_ids(self) -> list[UUID]:
        return claims_without_outcome(self, *TRANSFER_CLAIMS)

    def _resume_isolated(self, payout_id: UUID) -> ReleaseResult:
        """Resume one payout; whatever goes wrong stays with that payout."""
        payout: PayoutAggregate | None = None
        try:
            payout = self.get_payout_by_id(payout_id)
            return self._resume(payout)
        except ConfigurationError:
            raise  # the ledger cannot work on this store at all: not one payout's trouble
        except Exception as exc:
            logger.exception(
                "payout %s could not be resumed",
                payout_id,
                extra=telemetry.extras(
                    payout_id=str(payout_id),
                    event_service_id=payout.event_service_id if payout else None,
                    attempt=payout.attempt if payout else None,
                    outcome=ReleaseOutcome.OUTCOME_UNKNOWN.value,
                    error_code="cannot_resume",
                ),
            )
            return ReleaseResult(
                event_service_id=payout.event_service_id if payout else f"(payout {payout_id})",
                payout_id=payout_id,
                outcome=ReleaseOutcome.OUTCOME_UNKNOWN,
                attempt=payout.attempt if payout else None,
                error_code="cannot_resume",
                error_message=f"{type(exc).__name__}: {first_cause(exc)}"[:500],
                detail="cannot resume",
            )

    @telemetry.traced("payout_ledger.resume", lambda result: _described(result))
    def _resume(self, payout: PayoutAggregate) -> ReleaseResult:
        if payout.status is not PayoutStatus.IN_FLIGHT:
            return release_result(
                payout, OUTCOME_OF_STATUS[payout.status], detail="nothing in flight"
            )
        if not self._store_mode_settled:
            self._settle_store_mode()  # before asking Stripe anything, in the wrong mode too
        if payout.attempt > 1:
            self._check_terms_kept(payout)
        if self._gateway is None or not self.settings.stripe_enabled:
            return self._conclude(payout, simulated_transfer(payout), detail="simulated")
        window = self._open_window()
        try:
            found = self._find_transfers(payout)
        except GatewayError as exc:
            return release_result(
                payout, ReleaseOutcome.OUTCOME_UNKNOWN, exc, detail="lookup failed"
            )
        # Decide on the store as it is after the lookup: another resume, a webhook
        # or a release may have settled the payout while this one was asking.
        payout = self.get_payout_by_id(payout.id)
        if payout.status is not PayoutStatus.IN_FLIGHT:
            return release_result(
                payout, OUTCOME_OF_STATUS[payout.status], detail="settled meanwhile"
            )
        current = [t for t in found if t.metadata.get("attempt") == str(payout.attempt)]
        if current:
            differs = claim_differences(payout, current[0])
            if differs:
                return release_result(
                    payout,
                    ReleaseOutcome.OUTCOME_UNKNOWN,
                    detail=f"Stripe's transfer {current[0].id} differs from the claim: {differs}",
                )
            payout.record_transfer(transfer_id=current[0].id, request_id=None)
            return self._save_outcome(payout, ReleaseOutcome.RELEASED, detail="found at Stripe")
        if found:
            # A transfer of an attempt recorded as failed: the books disagree with
            # Stripe. Paying again could only make it worse; reconcile reports it.
            return release_result(
                payout,
                ReleaseOutcome.OUTCOME_UNKNOWN,
                detail=f"Stripe has transfer {found[0].id} of another attempt",
            )
        return self._conclude(
            payout, self._call_gateway(payout, window), detail="retried with the same key"
        )

    def _check_terms_kept(self, payout: PayoutAggregate) -> None:
        """A later attempt pays what the first claimed (the ledger never writes otherwise).

        A claim appended behind the ledger's back (after the latest seal, where
        verify cannot see it) must not make a resume pay another amount.
        """
        [first, *_] = self.history(payout.event_service_id)
        claimed = (payout.amount, payout.currency, payout.provider_id)
        if claimed != (first.amount, first.currency, first.provider_id):  # type: ignore[attr-defined]
            raise LedgerIntegrityError(
                f"attempt {payout.attempt} of {payout.event_service_id!r} claims other terms "
                "than its first attempt: it is not sent; run payout-ledger audit"
            )


def _described(result: ReleaseResult) -> dict[str, str | int | None]:
    """A resume's span attributes: its outcome, never an id."""
    return {
        "outcome": result.outcome.value,
        "attempt": result.attempt,
        "error_code": telemetry.label(result.error_code, missing="") or None,
    }

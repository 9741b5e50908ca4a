"""Release: claim the payout, then ask Stripe to transfer, exactly once.

The save of ``PayoutStarted`` is the claim: the store accepts one event per
(payout, version), so of two callers that decided on the same version only
one saves, and only the one that saved calls Stripe. The loser reloads, sees
the payout in flight (or released) and answers so. No database lock or
transaction is held while Stripe is being called.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import (
    IntegrityError,
)

from payout_ledger.adapters import telemetry
from payout_ledger.domain.chain import broken_link
from payout_ledger.domain.payout import PayoutAggregate, PayoutStatus
from payout_ledger.errors import (
    ConfigurationError,
    GatewayError,
    LedgerBusyError,
    LedgerIntegrityError,
    ProviderNotFoundError,
    ReleaseConflictError,
    SourceTransactionError,
    TransferDeclined,
)
from payout_ledger.service.attempts import Attempts, release_result
from payout_ledger.service.payability import provider_action_required
from payout_ledger.service.ports import (
    ChargeGateway,
    SendWindow,
    ServiceProvider,
)
from payout_ledger.service.requests import (
    ReleaseOutcome,
    ReleaseRequest,
    ReleaseResult,
)

__all__ = ["Releasing"]

logger = logging.getLogger("payout_ledger")


class Releasing(Attempts):
    """Releasing a payment: the claim, then the transfer."""

    def release_payment(self, request: ReleaseRequest | Mapping[str, Any]) -> ReleaseResult:
        """Release the event service's payment to its provider, exactly once.

        Raises [`InvalidRequestError`][payout_ledger.InvalidRequestError],
        [`ProviderNotFoundError`][payout_ledger.ProviderNotFoundError] or
        [`ReleaseConflictError`][payout_ledger.ReleaseConflictError] before
        anything is recorded; every other outcome is a
        [`ReleaseResult`][payout_ledger.ReleaseResult].
        """
        with _observed() as done:
            return done(self._release_payment(request))

    def _release_payment(self, request: ReleaseRequest | Mapping[str, Any]) -> ReleaseResult:
        req = ReleaseRequest.parse(request)
        provider = self._provider(req)
        checked = self._checked_source(req)
        if isinstance(checked, ReleaseResult):
            return checked
        decided = self._decide(checked, provider)
        if isinstance(decided, ReleaseResult):
            return decided
        return self._conclude(decided.payout, self._call_gateway(decided.payout, decided.window))

    async def release_payment_async(
        self, request: ReleaseRequest | Mapping[str, Any]
    ) -> ReleaseResult:
        """[`release_payment`][payout_ledger.PayoutLedger.release_payment] for asyncio hosts.

        Store and directory calls run in worker threads, off the event loop; the
        Stripe call uses the gateway's ``create_transfer_async`` when it has one.
        The guarantees are the same: the claim is the same save.
        """
        with _observed() as done:
            return done(await self._release_payment_async(request))

    async def _release_payment_async(
        self, request: ReleaseRequest | Mapping[str, Any]
    ) -> ReleaseResult:
        req = ReleaseRequest.parse(request)
        provider = await asyncio.to_thread(self._provider, req)
        checked = await asyncio.to_thread(self._checked_source, req)
        if isinstance(checked, ReleaseResult):
            return checked
        decided = await asyncio.to_thread(self._decide, checked, provider)
        if isinstance(decided, ReleaseResult):
            return decided
        outcome = await self._call_gateway_async(decided.payout, decided.window)
        return await asyncio.to_thread(self._conclude, decided.payout, outcome)

    def _provider(self, req: ReleaseRequest) -> ServiceProvider:
        provider = self._providers.get_provider(req.provider_id)
        if provider is None:
            raise ProviderNotFoundError(req.provider_id)
        return provider

    def _checked_source(self, req: ReleaseRequest) -> ReleaseRequest | ReleaseResult:
        """The request with its source transaction as a charge id, checked against
        Stripe's rule (the amount may not exceed the charge, less refunds).

        Raises [`SourceTransactionError`][payout_ledger.SourceTransactionError]
        before anything is recorded; answers ``failed`` (nothing recorded) when
        Stripe cannot be asked. Without Stripe (simulated transfers) or without
        a [`ChargeGateway`][payout_ledger.service.ports.ChargeGateway] the charge is
        recorded as given and Stripe enforces its rule on the transfer.
        """
        source = req.source_transaction
        gateway = self._gateway
        if source is None or gateway is None or not self.settings.stripe_enabled:
            return req
        if not isinstance(gateway, ChargeGateway):
            if source.startswith("pi_"):
                raise ConfigurationError(
                    "a release naming a PaymentIntent needs a gateway that can look up its "
                    "latest charge (ChargeGateway); name the charge (ch_...) instead"
                )
            return req
        try:
            charge_id = gateway.latest_charge(source) if source.startswith("pi_") else source
            charge = gateway.retrieve_charge(charge_id)
        except TransferDeclined as exc:
            raise SourceTransactionError(f"source_transaction {source!r}: {exc.message}") from None
        except GatewayError as exc:
            return ReleaseResult(
                event_service_id=req.event_service_id,
                payout_id=self.payout_id(req.event_service_id),
                outcome=ReleaseOutcome.FAILED,
                error_code=exc.code,
                error_message=exc.message,
                stripe_request_id=exc.request_id,
                detail="nothing recorded: Stripe could not be asked about the source transaction",
            )
        if charge.currency != req.amount.currency:
            raise SourceTransactionError(
                f"source_transaction {charge.id!r} is in {charge.currency}, "
                f"the release in {req.amount.currency}"
            )
        available = charge.amount - charge.amount_refunded
        if req.amount.amount > available:
            raise SourceTransactionError(
                f"source_transaction {charge.id!r} can fund at most {available} "
                f"{charge.currency}, not {req.amount.amount}"
            )
        return req.model_copy(update={"source_transaction": charge.id})

    def _decide(self, req: ReleaseRequest, provider: ServiceProvider) -> ReleaseResult | _Claimed:
        """Claim the payout (and return it) or give the final answer.

        Most releases are first releases, so the claim of attempt 1 is tried
        before anything is read: version 1 of a payout can be saved only once,
        and a conflict hands back the stored payout to decide on. A re-release
        costs a refused insert instead of a read; a first release saves a read.
        """
        can_pay = provider.stripe_account_id is not None or not self.settings.stripe_enabled
        # An account known to be unpayable: no claim, no request (one read per release).
        unpayable = self._known_unpayable(provider.stripe_account_id) if can_pay else None
        if can_pay and unpayable is None:
            claim = self._claim(None, req, provider)
            if isinstance(claim, _Claimed):
                return claim
            payout = claim.stored
        else:
            payout = self._load(req.event_service_id)
        for _ in range(self.settings.claim_attempts):
            if payout is not None:
                _check_same_release(payout, req)
                if payout.is_paid:
                    return release_result(payout, ReleaseOutcome.ALREADY_RELEASED)
                if payout.status is not PayoutStatus.FAILED:
                    return release_result(payout, ReleaseOutcome.IN_PROGRESS)
            if not can_pay:
                return ReleaseResult(
                    event_service_id=req.event_service_id,
                    payout_id=self.payout_id(req.event_service_id),
                    outcome=ReleaseOutcome.ONBOARDING_REQUIRED,
                    error_code="onboarding_required",
                    error_message=f"provider {provider.id!r} has no Stripe account",
                )
            if unpayable is not None:
                return provider_action_required(req.event_service_id, unpayable, payout)
            if payout is not None:
                refused = self._before_next_attempt(payout)
                if refused is not None:
                    return refused
            claim = self._claim(payout, req, provider)
            if isinstance(claim, _Claimed):
                return claim
            payout = claim.stored
            logger.info(
                "release of %s lost the claim race",
                req.event_service_id,
                extra=telemetry.extras(event_service_id=req.event_service_id),
            )
        raise LedgerBusyError(req.event_service_id, self.settings.claim_attempts)

    def _before_next_attempt(self, payout: PayoutAggregate) -> ReleaseResult | None:
        """A new attempt may pay again: first make sure the failed one did not pay.

        The payout's log must chain (a copied or forged ``TransferFailed`` does
        not), and Stripe must have no transfer of this payout (a refusal Stripe
        did not store under its key, or a resume in another mode, could leave
        one). Raises [`LedgerIntegrityError`][payout_ledger.LedgerIntegrityError]
        when either says it did; answers ``failed`` (nothing sent) when Stripe
        cannot be asked.
        """
        broken = broken_link(self.history(payout.event_service_id), self.mapper.transcoder)
        if broken is not None:
            raise LedgerIntegrityError(
                f"the payout of {payout.event_service_id!r} does not chain ({broken}): "
                "it is not paid again; run payout-ledger verify"
            )
        if self._gateway is None or not self.settings.stripe_enabled:
            return None
        try:
            found = self._find_transfers(payout)
        except GatewayError as exc:
            return release_result(
                payout,
                ReleaseOutcome.FAILED,
                exc,
                detail="not retried: Stripe could not be asked whether the failed attempt paid",
            )
        if found:
            logger.error(
                "Stripe has transfer %s for %s, whose attempt %d is recorded as failed",
                found[0].id,
                payout.event_service_id,
                payout.attempt,
                extra=telemetry.extras(
                    event_service_id=payout.event_service_id,
                    payout_id=str(payout.id),
                    attempt=payout.attempt,
                    transfer_id=found[0].id,
                ),
            )
            raise LedgerIntegrityError(
                f"Stripe has transfer {found[0].id} (attempt {found[0].metadata.get('attempt')}) "
                f"for {payout.event_service_id!r}, whose attempt {payout.attempt} is recorded "
                "as failed: it is not paid again; run payout-ledger reconcile"
            )
        return None

    def _claim(
        self,
        payout: PayoutAggregate | None,
        req: ReleaseRequest,
        provider: ServiceProvider,
    ) -> _Claimed | _LostClaim:
        """Save the next attempt's ``PayoutStarted``: the claimed payout, or what beat it.

        The attempt's send window opens before the save, so it is open no longer
        than the claim has existed.
        """
        if payout is None:
            payout = PayoutAggregate.start(
                event_service_id=req.event_service_id,
                provider_id=provider.id,
                payee_user_id=provider.user_id,
                destination_account=provider.stripe_account_id,
                amount=req.amount.amount,
                currency=req.amount.currency,
                started_at=self._clock.now(),
                source_transaction=req.source_transaction,
                description=req.description,
                group=req.transfer_group,
            )
        else:
            payout.start_next_attempt(
                payee_user_id=provider.user_id,
                destination_account=provider.stripe_account_id,
                started_at=self._clock.now(),
                source_transaction=req.source_transaction,
                description=req.description,
            )
        window = self._open_window()
        try:
            self.save(payout)
        except IntegrityError:
            # Usually someone else's claim (or an earlier release). But when a
            # connection dies after the commit and before its acknowledgement, the
            # store's retry of our own insert hits the uniqueness constraint too: if
            # the stored claim is ours (same version, attempt, claim time and event
            # time, to the microsecond), we won it.
            stored = self._load(req.event_service_id)
            if stored is not None and _same_claim(stored, payout):
                logger.info(
                    "claim of %s was stored before its acknowledgement was lost",
                    req.event_service_id,
                    extra=telemetry.extras(
                        event_service_id=req.event_service_id, attempt=stored.attempt
                    ),
                )
                return _Claimed(stored, window)
            return _LostClaim(stored)
        return _Claimed(payout, window)


@contextmanager
def _observed() -> Iterator[Callable[[ReleaseResult], ReleaseResult]]:
    """A release's span, its count by outcome and its duration (``error`` when it raises).

    Only low-cardinality values go to the span and the metrics; the ids go to the
    log record.
    """
    started = time.perf_counter()
    with telemetry.span("payout_ledger.release") as current:

        def done(result: ReleaseResult) -> ReleaseResult:
            outcome = result.outcome.value
            telemetry.count_release(outcome, time.perf_counter() - started)
            current.set(
                outcome=outcome,
                attempt=result.attempt,
                error_code=telemetry.label(result.error_code, missing="") or None,
            )
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "release of %s: %s",
                    result.event_service_id,
                    outcome,
                    extra=telemetry.extras(
                        event_service_id=result.event_service_id,
                        payout_id=str(result.payout_id),
                        attempt=result.attempt,
                        outcome=outcome,
                        transfer_id=result.transfer_id,
                        error_code=result.error_code,
                    ),
                )
            return result

        try:
            yield done
        except Exception:
            telemetry.count_release("error", time.perf_counter() - started)
            raise


@dataclass(frozen=True)
class _Claimed:
    """A claim this caller saved, and the window in which it may send its request."""

    payout: PayoutAggregate
    window: SendWindow


@dataclass(frozen=True)
class _LostClaim:
    """A claim refused by the store, with the payout stored instead (if readable)."""

    stored: PayoutAggregate | None


def _same_claim(stored: PayoutAggregate, ours: PayoutAggregate) -> bool:
    return (
        stored.version == ours.version
        and stored.status is PayoutStatus.IN_FLIGHT
        and stored.attempt == ours.attempt
        and stored.attempt_started_at == ours.attempt_started_at
        and stored.modified_on == ours.modified_on
    )


def _check_same_release(payout: PayoutAggregate, req: ReleaseRequest) -> None:
    for field, recorded, requested in (
        ("provider_id", payout.provider_id, req.provider_id),
        ("amount", payout.amount, req.amount.amount),
        ("currency", payout.currency, req.amount.currency),
    ):
        if recorded != requested:
            raise ReleaseConflictError(req.event_service_id, field, recorded, requested)

"""PayoutLedger: the service layer that releases payments exactly once.

Each release loads the event service's payout, decides, and saves. The save of
``PayoutStarted`` is the claim: the store accepts one event per (payout,
version), so of two callers that decided on the same version only one saves,
and only the one that saved calls Stripe. The loser reloads, sees the payout in
flight (or released) and answers so. No database lock or transaction is held
while Stripe is being called.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from typing import Any, cast
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import ApplicationRecorder, IntegrityError, InternalError
from eventsourcing.postgres import BasePostgresFactory, PostgresApplicationRecorder
from eventsourcing.utils import Environment

from payout_ledger.errors import (
    ConfigurationError,
    LedgerBusyError,
    PayoutNotFoundError,
    ProviderNotFoundError,
    ReleaseConflictError,
    TransferDeclined,
    TransferNotExecuted,
    TransferOutcomeUnknown,
)
from payout_ledger.payout import PayoutAggregate, PayoutStatus
from payout_ledger.ports import (
    ProviderDirectory,
    ServiceProvider,
    TransferGateway,
    TransferRequest,
)
from payout_ledger.release import ReleaseOutcome, ReleaseRequest, ReleaseResult
from payout_ledger.settings import LedgerSettings, store_environment

__all__ = ["PayoutLedger"]

logger = logging.getLogger("payout_ledger")

_DDL_ATTEMPTS = 6


class PayoutLedger(Application):  # type: ignore[type-arg]
    """Releases event services' payments to their providers, exactly once.

    ```python
    ledger = PayoutLedger(
        settings=LedgerSettings(store_url="sqlite:///payouts.db"),
        providers=my_provider_directory,
        gateway=StripeTransferGateway(...),
    )
    result = ledger.release_payment(
        {"event_service_id": "es_1", "provider_id": "prov_1",
         "amount": {"amount": 5000, "currency": "usd"}}
    )
    ```
    """

    name = "PayoutLedger"  # pinned: it names the PostgreSQL table payoutledger_events

    def __init__(
        self,
        *,
        settings: LedgerSettings,
        providers: ProviderDirectory,
        gateway: TransferGateway | None = None,
    ) -> None:
        settings.check()
        if settings.stripe_enabled and gateway is None:
            raise ConfigurationError("a transfer gateway is required when Stripe is enabled")
        self.settings = settings
        self._providers = providers
        self._gateway = gateway
        super().__init__(env=store_environment(settings))

    def construct_env(self, name: str, env: Any = None) -> Environment:
        # Only what the host passed in: os.environ must not pick the store.
        return Environment(name, dict(env or {}))

    def construct_recorder(self) -> ApplicationRecorder:
        # eventsourcing creates tables when the recorder is built. Several processes
        # starting at once (web workers) race on PostgreSQL's catalog ("tuple
        # concurrently updated"); every statement is IF NOT EXISTS / OR REPLACE,
        # so creating again after a short pause is safe.
        if not isinstance(self.factory, BasePostgresFactory):
            return super().construct_recorder()
        self.factory.env[BasePostgresFactory.CREATE_TABLE] = "no"
        recorder = super().construct_recorder()
        if not self.settings.create_tables:
            return recorder
        assert isinstance(recorder, PostgresApplicationRecorder)
        for attempt in range(1, _DDL_ATTEMPTS + 1):
            try:
                recorder.create_table()
            except (InternalError, IntegrityError):
                if attempt == _DDL_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0.05, 0.2) * attempt)
            else:
                break
        return recorder

    def __enter__(self) -> PayoutLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Queries.

    @staticmethod
    def payout_id(event_service_id: str) -> UUID:
        """The id of an event service's payout (uuid5 of the service id)."""
        return PayoutAggregate.create_id(event_service_id)

    def get_payout(self, event_service_id: str) -> PayoutAggregate:
        """The payout's current state, rebuilt from its events."""
        payout = self._load(event_service_id)
        if payout is None:
            raise PayoutNotFoundError(event_service_id)
        return payout

    def history(self, event_service_id: str) -> list[PayoutAggregate.Event]:
        """The payout's events, oldest first (empty if it was never started)."""
        events = self.events.get(self.payout_id(event_service_id))
        return [cast(PayoutAggregate.Event, e) for e in events]

    # Commands.

    def release_payment(self, request: ReleaseRequest | Mapping[str, Any]) -> ReleaseResult:
        """Release the event service's payment to its provider, exactly once.

        Raises [`InvalidRequestError`][payout_ledger.InvalidRequestError],
        [`ProviderNotFoundError`][payout_ledger.ProviderNotFoundError] or
        [`ReleaseConflictError`][payout_ledger.ReleaseConflictError] before
        anything is recorded; every other outcome is a
        [`ReleaseResult`][payout_ledger.ReleaseResult].
        """
        req = ReleaseRequest.parse(request)
        provider = self._providers.get_provider(req.provider_id)
        if provider is None:
            raise ProviderNotFoundError(req.provider_id)
        for _ in range(self.settings.claim_attempts):
            payout = self._load(req.event_service_id)
            if payout is not None:
                _check_same_release(payout, req)
                if payout.status is PayoutStatus.RELEASED:
                    return _result(payout, ReleaseOutcome.ALREADY_RELEASED)
                if payout.status is not PayoutStatus.FAILED:
                    return _result(payout, ReleaseOutcome.IN_PROGRESS)
            if self.settings.stripe_enabled and provider.stripe_account_id is None:
                return ReleaseResult(
                    event_service_id=req.event_service_id,
                    payout_id=self.payout_id(req.event_service_id),
                    outcome=ReleaseOutcome.ONBOARDING_REQUIRED,
                    error_code="onboarding_required",
                    error_message=f"provider {provider.id!r} has no Stripe account",
                )
            payout = self._claim(payout, req, provider)
            if payout is None:
                continue  # lost the race: reload and decide again
            return self._transfer(payout)
        raise LedgerBusyError(req.event_service_id, self.settings.claim_attempts)

    # Internals.

    def _load(self, event_service_id: str) -> PayoutAggregate | None:
        try:
            payout: object = self.repository.get(self.payout_id(event_service_id))
        except AggregateNotFoundError:
            return None
        return cast(PayoutAggregate, payout)

    def _claim(
        self,
        payout: PayoutAggregate | None,
        req: ReleaseRequest,
        provider: ServiceProvider,
    ) -> PayoutAggregate | None:
        if payout is None:
            payout = PayoutAggregate.start(
                event_service_id=req.event_service_id,
                provider_id=provider.id,
                payee_user_id=provider.user_id,
                destination_account=provider.stripe_account_id,
                amount=req.amount.amount,
                currency=req.amount.currency,
            )
        else:
            payout.start_next_attempt(
                payee_user_id=provider.user_id,
                destination_account=provider.stripe_account_id,
            )
        try:
            self.save(payout)
        except IntegrityError:
            logger.info("release of %s lost the claim race", req.event_service_id)
            return None
        return payout

    def _transfer(self, payout: PayoutAggregate) -> ReleaseResult:
        if self._gateway is None or not self.settings.stripe_enabled:
            # Stripe disabled (local development): nothing moves.
            payout.record_transfer(
                transfer_id=f"sim_{payout.id.hex}_{payout.attempt}",
                request_id=None,
                simulated=True,
            )
            return self._save_outcome(payout, ReleaseOutcome.RELEASED)
        assert payout.destination_account is not None  # onboarding was checked
        request = TransferRequest(
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
        )
        try:
            transfer = self._gateway.create_transfer(request)
        except TransferDeclined as exc:
            payout.record_failure(code=exc.code, message=exc.message, request_id=exc.request_id)
            return self._save_outcome(payout, ReleaseOutcome.FAILED, exc)
        except TransferNotExecuted as exc:
            return _result(payout, ReleaseOutcome.NOT_EXECUTED, exc)
        except TransferOutcomeUnknown as exc:
            logger.warning(
                "transfer outcome unknown for %s (attempt %d); payout left in flight",
                payout.event_service_id,
                payout.attempt,
            )
            return _result(payout, ReleaseOutcome.OUTCOME_UNKNOWN, exc)
        payout.record_transfer(transfer_id=transfer.transfer_id, request_id=transfer.request_id)
        return self._save_outcome(payout, ReleaseOutcome.RELEASED)

    def _save_outcome(
        self,
        payout: PayoutAggregate,
        outcome: ReleaseOutcome,
        error: Exception | None = None,
    ) -> ReleaseResult:
        try:
            self.save(payout)
        except IntegrityError:
            # Someone settled this attempt first (a resume or a webhook). The
            # stored outcome wins; ours is dropped, never written twice.
            stored = self.get_payout(payout.event_service_id)
            return _result(stored, _OUTCOME_OF_STATUS[stored.status])
        return _result(payout, outcome, error)


_OUTCOME_OF_STATUS = {
    PayoutStatus.RELEASED: ReleaseOutcome.RELEASED,
    PayoutStatus.TRANSFERRED: ReleaseOutcome.IN_PROGRESS,
    PayoutStatus.IN_FLIGHT: ReleaseOutcome.IN_PROGRESS,
    PayoutStatus.FAILED: ReleaseOutcome.FAILED,
}


def _check_same_release(payout: PayoutAggregate, req: ReleaseRequest) -> None:
    for field, recorded, requested in (
        ("provider_id", payout.provider_id, req.provider_id),
        ("amount", payout.amount, req.amount.amount),
        ("currency", payout.currency, req.amount.currency),
    ):
        if recorded != requested:
            raise ReleaseConflictError(req.event_service_id, field, recorded, requested)


def _result(
    payout: PayoutAggregate, outcome: ReleaseOutcome, error: Exception | None = None
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
    )

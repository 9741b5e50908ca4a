"""Payability: whether a provider's connected account can be paid, and who is told.

Reports come from Connect ``account.updated`` events
([`record_stripe_event`][payout_ledger.PayoutLedger.record_stripe_event]), from
[`sync_account`][payout_ledger.PayoutLedger.sync_account] (the ledger asks
Stripe), and from Stripe's refusal of a transfer because of its destination.
Each is saved as a ``PayabilityReported`` of the account's
[`ConnectedAccount`][payout_ledger.domain.account.ConnectedAccount]; the order
rule (which report counts) is in that module. A release to an account known to
be unpayable answers ``provider_action_required`` before anything is recorded
or sent. The host's ``on_payability_changed`` is called after a save that
changes whether, or why, the account can be paid, or its ``payouts_enabled``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, TypedDict, cast

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError, MapperDeserialisationError
from pydantic import TypeAdapter, ValidationError

from payout_ledger.adapters.store import first_cause
from payout_ledger.domain.account import (
    NO_SUCH_DESTINATION,
    AccountPayability,
    ConnectedAccount,
    PayabilitySource,
)
from payout_ledger.domain.payout import PayoutAggregate, PayoutStatus
from payout_ledger.errors import (
    ConfigurationError,
    DestinationUnpayable,
    InvalidRequestError,
    LedgerBusyError,
    LedgerIntegrityError,
)
from payout_ledger.service.core import LedgerCore
from payout_ledger.service.ports import AccountLookup, StripeAccount, StripeAccountId
from payout_ledger.service.requests import ReleaseOutcome, ReleaseResult

__all__ = ["Payability", "PayabilityReport", "provider_action_required"]

logger = logging.getLogger("payout_ledger")

_ACCOUNT_ID: TypeAdapter[str] = TypeAdapter(StripeAccountId)


@dataclass(frozen=True)
class PayabilityReport:
    """A report added to an account's aggregate, not saved yet."""

    account: ConnectedAccount
    before: AccountPayability | None

    @property
    def changed(self) -> bool:
        """Whether the report changes whether or why the account can be paid."""
        after = self.account.payability
        before = self.before
        return before is None or (before.payable, before.reason, before.payouts_enabled) != (
            after.payable,
            after.reason,
            after.payouts_enabled,
        )


class Payability(LedgerCore):
    """Connected accounts' payability: recorded, read, synced with Stripe."""

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        """``LedgerCore.save``; a saved report is seen by this ledger's next release."""
        try:
            return super().save(*objs, **kwargs)
        finally:
            for obj in objs:
                if isinstance(obj, ConnectedAccount):
                    self._payable_accounts.forget(obj.account_id)

    def account_payability(self, account_id: str) -> AccountPayability | None:
        """The connected account's payability by its latest report, or None if the
        ledger has no report of it (then a release is sent to Stripe as usual).

        Raises [`InvalidRequestError`][payout_ledger.InvalidRequestError] for an id
        that is not ``acct_...``.
        """
        account = self._connected_account(_checked_account_id(account_id))
        return None if account is None else account.payability

    def sync_account(self, account_id: str) -> AccountPayability:
        """Ask Stripe for the connected account now, record its payability and return it.

        A sync is what Stripe answers now, so it counts over any earlier report;
        it is recorded when it differs from the latest report (or is the first).
        An account Stripe does not know (deleted) is recorded unpayable,
        ``no_such_destination``. Raises
        [`ConfigurationError`][payout_ledger.ConfigurationError] when Stripe is
        disabled or the gateway cannot retrieve accounts (it lacks
        ``retrieve_account``, see
        [`AccountLookup`][payout_ledger.service.ports.AccountLookup]),
        [`GatewayError`][payout_ledger.GatewayError] when Stripe cannot be asked
        (nothing recorded), and
        [`InvalidRequestError`][payout_ledger.InvalidRequestError] for an id that
        is not ``acct_...``.
        """
        account_id = _checked_account_id(account_id)
        gateway = self._gateway
        if gateway is None or not self.settings.stripe_enabled:
            raise ConfigurationError("sync_account asks Stripe: Stripe is disabled")
        if not isinstance(gateway, AccountLookup):
            raise ConfigurationError(
                f"the transfer gateway ({type(gateway).__name__}) cannot retrieve accounts: "
                "it needs a retrieve_account(account_id) method"
            )
        found = gateway.retrieve_account(account_id)
        return self._record_account_state(account_id, found)

    def _record_account_state(self, account_id: str, found: StripeAccount) -> AccountPayability:
        fields = _fields_of(found)
        for _ in range(self.settings.claim_attempts):
            account = self._connected_account(account_id)
            if account is not None and _same_state(account, fields):
                return account.payability
            report = self._payability_report(account, account_id, PayabilitySource.SYNC, **fields)
            if report is None:  # never: a sync is never stale
                break
            try:
                self.save(report.account)
            except IntegrityError:
                continue  # another report came first: decide again
            self._payability_saved(report)
            return report.account.payability
        raise LedgerBusyError(account_id, self.settings.claim_attempts)

    # For the other use cases.

    def _connected_account(self, account_id: str) -> ConnectedAccount | None:
        account_uuid = ConnectedAccount.create_id(account_id)
        try:
            return cast(ConnectedAccount, self.repository.get(account_uuid))
        except AggregateNotFoundError:
            return None
        except MapperDeserialisationError as exc:
            raise LedgerIntegrityError(
                f"a stored payability report of {account_id} cannot be read: "
                f"{first_cause(exc)}; run payout-ledger verify"
            ) from exc

    def _payability_report(
        self,
        account: ConnectedAccount | None,
        account_id: str,
        source: PayabilitySource,
        *,
        payouts_enabled: bool | None = None,
        transfers: str | None = None,
        disabled_reason: str | None = None,
        refusal: str | None = None,
        stripe_event_id: str | None = None,
        stripe_created: int | None = None,
    ) -> PayabilityReport | None:
        """The report added to ``account`` (loaded by the caller), or None when stale."""
        before = None if account is None else account.payability
        reported = ConnectedAccount.report(
            account,
            account_id=account_id,
            payouts_enabled=payouts_enabled,
            transfers=transfers,
            disabled_reason=disabled_reason,
            refusal=refusal,
            source=source.value,
            stripe_event_id=stripe_event_id,
            stripe_created=stripe_created,
            reported_at=self._clock.now(),
        )
        return None if reported is None else PayabilityReport(reported, before)

    def _payability_saved(self, report: PayabilityReport | None) -> None:
        """Tell the host, after the save, when the report changed the account's payability."""
        callback = self._on_payability_changed
        if report is None or callback is None or not report.changed:
            return
        payability = report.account.payability
        try:
            callback(payability)
        except Exception:
            logger.exception(
                "on_payability_changed failed for %s (the report is recorded)",
                payability.account_id,
            )

    def _known_unpayable(self, account_id: str | None) -> AccountPayability | None:
        """The account's payability when the ledger knows it cannot be paid, else None.

        A payable (or never reported) account is read once per
        ``settings.payability_cache_seconds`` (see ``payout_ledger.service.payable_accounts``)."""
        if account_id is None or not self.settings.stripe_enabled:
            return None
        remembered = self._payable_accounts
        if remembered.payable(account_id):
            return None
        token = remembered.token()
        account = self._connected_account(account_id)
        if account is None or account.payability.payable:
            remembered.remember(account_id, token)
            return None
        return account.payability

    def _save_refusal(
        self, payout: PayoutAggregate, error: DestinationUnpayable
    ) -> tuple[PayoutAggregate, AccountPayability | None]:
        """Record the attempt's refusal and the account's report in one save.

        Returns the saved payout and the account's payability, or the stored
        payout and None when someone else settled the attempt first (theirs wins).
        """
        account_id = error.account_id or payout.destination_account or ""
        for _ in range(self.settings.claim_attempts):
            payout.record_failure(
                code=error.code, message=error.message, request_id=error.request_id
            )
            refusal = NO_SUCH_DESTINATION if error.reason == NO_SUCH_DESTINATION else error.code
            report = self._payability_report(
                self._connected_account(account_id),
                account_id,
                PayabilitySource.TRANSFER_REFUSED,
                refusal=refusal or error.reason,
            )
            saved = [payout] if report is None else [payout, report.account]
            try:
                self.save(*saved)
            except IntegrityError:
                stored = self.get_payout(payout.event_service_id)
                if stored.status is not PayoutStatus.IN_FLIGHT or stored.attempt != payout.attempt:
                    return stored, None
                payout = stored  # the account's report lost a race: again
                continue
            self._payability_saved(report)
            return payout, None if report is None else report.account.payability
        raise LedgerBusyError(payout.event_service_id, self.settings.claim_attempts)


def provider_action_required(
    event_service_id: str,
    payability: AccountPayability,
    payout: PayoutAggregate | None = None,
    *,
    request_id: str | None = None,
    detail: str | None = None,
) -> ReleaseResult:
    """The ``provider_action_required`` answer for an unpayable account."""
    return ReleaseResult(
        event_service_id=event_service_id,
        payout_id=PayoutAggregate.create_id(event_service_id),
        outcome=ReleaseOutcome.PROVIDER_ACTION_REQUIRED,
        attempt=None if payout is None else payout.attempt,
        idempotency_key=None if payout is None else payout.idempotency_key,
        error_code=payability.reason,
        error_message=f"connected account {payability.account_id}: {payability.message}",
        stripe_request_id=request_id,
        detail=detail,
    )


def _checked_account_id(value: object) -> str:
    try:
        return _ACCOUNT_ID.validate_python(value)
    except ValidationError:
        raise InvalidRequestError("account_id: a connected account id is acct_...") from None


class _State(TypedDict, total=False):
    payouts_enabled: bool | None
    transfers: str | None
    disabled_reason: str | None
    refusal: str | None


def _fields_of(found: StripeAccount) -> _State:
    if found.deleted:
        return {"refusal": NO_SUCH_DESTINATION}
    return {
        "payouts_enabled": found.payouts_enabled,
        "transfers": found.transfers,
        "disabled_reason": found.disabled_reason,
    }


def _same_state(account: ConnectedAccount, fields: _State) -> bool:
    return (
        account.payouts_enabled,
        account.transfers,
        account.disabled_reason,
        account.refusal,
    ) == (
        fields.get("payouts_enabled"),
        fields.get("transfers"),
        fields.get("disabled_reason"),
        fields.get("refusal"),
    )

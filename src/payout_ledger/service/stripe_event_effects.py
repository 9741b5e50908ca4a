"""Stripe events (verified webhooks): recorded once, with their effect, in one save.

Transfer reports settle a payout whose answer was lost (only when they are
the claimed transfer) and record reversals, and settle the platform's reversal
attempt in flight when the transfer lists its reversal; a captured PaymentIntent is
recorded; connected accounts' events and every other type are kept for
audit and change nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    IntegrityError,
)

from payout_ledger.adapters import telemetry
from payout_ledger.domain.account import PayabilitySource
from payout_ledger.domain.payout import PayoutAggregate, PayoutStatus, ReversalStatus
from payout_ledger.domain.stripe_events import (
    CapturedPayment,
    StripeEventOutcome,
    StripeEventReceipt,
    StripeEventRecord,
)
from payout_ledger.errors import (
    InvalidRequestError,
    LedgerBusyError,
)
from payout_ledger.service.attempts import claim_differences
from payout_ledger.service.payability import Payability, PayabilityReport
from payout_ledger.service.ports import (
    StripeAccount,
    StripeReversal,
    StripeTransfer,
    string_metadata,
)
from payout_ledger.service.requests import (
    checked_stripe_id,
)
from payout_ledger.settings import STRIPE_API_VERSION

__all__ = ["StripeEventEffects"]

logger = logging.getLogger("payout_ledger")


_TRANSFER_EVENTS = frozenset({"transfer.created", "transfer.updated", "transfer.reversed"})


UPGRADE_DOC = "docs/stripe.md, section API versions"
"""Where the steps to take another Stripe API version are documented."""


class StripeEventEffects(Payability):
    """Recording verified Stripe events once, each with its effect on the books."""

    def has_stripe_event(self, event_id: str) -> bool:
        """Whether this Stripe event id has been recorded.

        Raises [`InvalidRequestError`][payout_ledger.InvalidRequestError] for an
        id that is not 1-255 printable ASCII characters without spaces.
        """
        event_id = checked_stripe_id(event_id, "event id")
        try:
            self.repository.get(StripeEventRecord.create_id(event_id))
        except AggregateNotFoundError:
            return False
        return True

    def accepts_api_version(self, api_version: object) -> bool:
        """Whether a Stripe event of this ``api_version`` may act on the books.

        True for the pinned version (``settings.stripe_api_version``) and the
        versions in ``settings.stripe_accepted_api_versions``; False for any
        other, and for an event without one (Stripe's events always carry it).
        """
        return isinstance(api_version, str) and (
            api_version == STRIPE_API_VERSION
            or api_version in self.settings.stripe_accepted_api_versions
        )

    def record_stripe_event(
        self, *, event: Mapping[str, Any], raw_body: bytes, headers: Mapping[str, str]
    ) -> StripeEventReceipt:
        """Record a verified Stripe event once, together with its effect.

        ``transfer.created``/``transfer.updated``/``transfer.reversed`` settle an
        in-flight payout whose response was lost and record reversals (the
        cumulative amount, so out-of-order deliveries add up), but only when the
        transfer is the one claimed: same payout, attempt, amount, currency and
        destination. ``payment_intent.succeeded`` records the payment as
        captured. Events of connected accounts (with a top-level ``account``)
        are the connected accounts' business, never the platform's: they are
        recorded for audit and change nothing. Every other type is kept for
        audit only. The record and its effect are saved in one transaction, so
        a duplicate delivery has no second effect.

        A connected account's ``account.updated`` records the account's
        payability (see [`account_payability`][payout_ledger.PayoutLedger.account_payability]),
        unless it is older than the account's newest ``account.updated``.

        An event whose ``api_version`` the ledger does not understand (see
        [`accepts_api_version`][payout_ledger.PayoutLedger.accepts_api_version])
        is recorded for audit and has no effect at all, with one WARNING log line.

        A connected account's event of the other mode is ignored (not recorded:
        Stripe sends a live-connected account's test-mode events to the live
        Connect endpoint too). Raises
        [`LivemodeMismatchError`][payout_ledger.LivemodeMismatchError] (nothing
        recorded) for a platform event of the other mode than this ledger's
        [`livemode`][payout_ledger.PayoutLedger.livemode], and
        [`InvalidRequestError`][payout_ledger.InvalidRequestError] for an event
        without a string ``id``, ``type``, ``data.object``, or with an
        ``account`` or ``livemode`` of the wrong type, for an ``id`` or ``type``
        that is not 1-255 printable ASCII characters, a ``raw_body`` that is not
        UTF-8 bytes, headers that are not text, and any text that cannot be
        stored (a lone surrogate).
        """
        try:
            return self._record_stripe_event(event, raw_body, headers)
        except UnicodeEncodeError:
            raise InvalidRequestError(
                "a Stripe event holds text that is not valid Unicode (a lone surrogate)"
            ) from None

    def _record_stripe_event(
        self, event: Mapping[str, Any], raw_body: bytes, headers: Mapping[str, str]
    ) -> StripeEventReceipt:
        event_id, event_type, obj = _parse_stripe_event(event)
        event_id = checked_stripe_id(event_id, "event id")
        event_type = checked_stripe_id(event_type, "event type")
        if not isinstance(raw_body, bytes | bytearray | memoryview):
            raise InvalidRequestError(
                f"a Stripe event's raw_body is bytes, not {type(raw_body).__name__}"
            )
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise InvalidRequestError("a Stripe event's headers map str names to str values")
        account, livemode = _event_account(event), _event_livemode(event)
        stated = event.get("api_version")
        api_version = stated if isinstance(stated, str) else None  # the raw body keeps any other
        understood = self.accepts_api_version(api_version)
        if account is not None and self.other_mode(livemode):
            return StripeEventReceipt(
                event_id,
                event_type,
                StripeEventOutcome.IGNORED,
                None,
                f"a connected account's {'live' if livemode else 'test'}-mode event: not recorded",
            )
        self.check_livemode(livemode)
        try:
            body = bytes(raw_body).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequestError("a Stripe event body is UTF-8 JSON") from None
        for _ in range(self.settings.claim_attempts):
            if self.has_stripe_event(event_id):
                return StripeEventReceipt(event_id, event_type, StripeEventOutcome.DUPLICATE)
            report: PayabilityReport | None = None
            changed: list[Aggregate]
            detail: str | None
            if not understood:
                changed, outcome, event_service_id = [], StripeEventOutcome.RECORDED, None
                detail = (
                    f"api_version {api_version!r} is not understood (the ledger's is "
                    f"{STRIPE_API_VERSION}): recorded only"
                )
            elif account is None:
                changed, outcome, event_service_id, detail = self._effect_of(
                    event_id, event_type, obj
                )
            else:
                changed, outcome, event_service_id = [], StripeEventOutcome.RECORDED, None
                detail = "a connected account's event: recorded only"
                if event_type == "account.updated":
                    report = self._account_updated(event_id, account, obj, event.get("created"))
                    if report is not None:
                        changed, outcome = [report.account], StripeEventOutcome.APPLIED
                        detail = "payability recorded"
                    else:
                        detail = "older than the account's latest account.updated: recorded only"
            record = StripeEventRecord.receive(
                stripe_event_id=event_id,
                event_type=event_type,
                livemode=bool(livemode),
                account=account,
                stripe_created=_optional_int(event.get("created")),
                raw_body=body,
                headers={str(k).lower(): str(v) for k, v in headers.items()},
                outcome=outcome.value,
                event_service_id=event_service_id,
                api_version=api_version,
            )
            try:
                self.save(record, *changed)
            except IntegrityError:
                continue  # a duplicate, or the payout moved: decide again
            if not understood:
                logger.warning(
                    "stripe event %s (%s) has api_version %s; this ledger is pinned to %s and "
                    "accepts %s: recorded for audit, NO effect on the books (see %s)",
                    event_id,
                    event_type,
                    api_version if api_version is not None else "(none)",
                    STRIPE_API_VERSION,
                    list(self.settings.stripe_accepted_api_versions) or "no other",
                    UPGRADE_DOC,
                    extra=telemetry.extras(
                        event_id=event_id,
                        event_type=event_type,
                        api_version=api_version,
                        outcome=outcome.value,
                    ),
                )
            self._payability_saved(report)
            return StripeEventReceipt(event_id, event_type, outcome, event_service_id, detail)
        raise LedgerBusyError(event_id, self.settings.claim_attempts)

    def captured_payment(self, payment_intent_id: str) -> CapturedPayment | None:
        """The captured payment recorded for a PaymentIntent, if any.

        Raises [`InvalidRequestError`][payout_ledger.InvalidRequestError] for an
        id that is not 1-255 printable ASCII characters without spaces.
        """
        payment_intent_id = checked_stripe_id(payment_intent_id, "payment intent id")
        try:
            payment: object = self.repository.get(CapturedPayment.create_id(payment_intent_id))
        except AggregateNotFoundError:
            return None
        return cast(CapturedPayment, payment)

    def _account_updated(
        self, event_id: str, account_id: str, obj: Mapping[str, Any], created: object
    ) -> PayabilityReport | None:
        """The account's payability report for a Connect ``account.updated`` (None: stale)."""
        try:
            reported = StripeAccount.from_stripe(obj)
        except TypeError as exc:
            raise InvalidRequestError(f"account.updated: {exc}") from None
        return self._payability_report(
            self._connected_account(account_id),
            account_id,
            PayabilitySource.ACCOUNT_UPDATED,
            payouts_enabled=reported.payouts_enabled,
            transfers=reported.transfers,
            disabled_reason=reported.disabled_reason,
            stripe_event_id=event_id,
            stripe_created=_optional_int(created),
        )

    def _effect_of(
        self, event_id: str, event_type: str, obj: Mapping[str, Any]
    ) -> tuple[list[Aggregate], StripeEventOutcome, str | None, str | None]:
        if event_type == "payment_intent.succeeded":
            return self._capture_payment(event_id, obj)
        if event_type in _TRANSFER_EVENTS:
            return self._apply_transfer_report(event_id, obj)
        return [], StripeEventOutcome.RECORDED, None, None

    def _capture_payment(
        self, event_id: str, obj: Mapping[str, Any]
    ) -> tuple[list[Aggregate], StripeEventOutcome, str | None, str | None]:
        try:
            payment_intent_id = str(obj["id"])
            amount, currency = int(obj["amount"]), str(obj["currency"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise InvalidRequestError(
                "payment_intent.succeeded without id/amount/currency"
            ) from None
        if self.captured_payment(payment_intent_id) is not None:
            return [], StripeEventOutcome.RECORDED, None, "payment already captured"
        try:
            metadata = string_metadata(obj.get("metadata"))
        except TypeError as exc:
            raise InvalidRequestError(f"payment_intent.succeeded: {exc}") from None
        payment = CapturedPayment.capture(
            payment_intent_id=payment_intent_id,
            amount=amount,
            currency=currency,
            metadata=metadata,
            stripe_event_id=event_id,
        )
        return [payment], StripeEventOutcome.APPLIED, metadata.get("event_service_id"), None

    def _apply_transfer_report(
        self, event_id: str, obj: Mapping[str, Any]
    ) -> tuple[list[Aggregate], StripeEventOutcome, str | None, str | None]:
        try:
            transfer = StripeTransfer.from_stripe(obj)
        except (KeyError, TypeError, ValueError, OverflowError):
            raise InvalidRequestError("a transfer event without id/amount/currency") from None
        event_service_id = transfer.metadata.get("event_service_id")
        payout = self._load(event_service_id) if event_service_id else None
        if payout is None or transfer.metadata.get("payout_id") != str(payout.id):
            return [], StripeEventOutcome.RECORDED, None, "not a transfer of this ledger"
        differs = claim_differences(payout, transfer)
        if differs:
            logger.warning(
                "Stripe reports transfer %s for %s unlike its claim: %s",
                transfer.id,
                event_service_id,
                differs,
                extra=telemetry.extras(
                    event_id=event_id,
                    event_service_id=event_service_id,
                    payout_id=str(payout.id),
                    transfer_id=transfer.id,
                ),
            )
            return [], StripeEventOutcome.RECORDED, event_service_id, f"not the claim: {differs}"
        settled = False
        if payout.status is PayoutStatus.IN_FLIGHT:
            payout.record_transfer(transfer_id=transfer.id, request_id=None)
            settled = True
        if payout.transfer_id != transfer.id:
            logger.warning(
                "Stripe reports transfer %s for %s, the ledger has %s",
                transfer.id,
                event_service_id,
                payout.transfer_id,
                extra=telemetry.extras(
                    event_id=event_id,
                    event_service_id=event_service_id,
                    payout_id=str(payout.id),
                    transfer_id=transfer.id,
                    recorded_transfer_id=payout.transfer_id,
                ),
            )
            return [], StripeEventOutcome.RECORDED, event_service_id, "transfer differs"
        reversed_now = payout.record_reversal(
            transfer_id=transfer.id,
            amount_reversed=transfer.amount_reversed,
            stripe_event_id=event_id,
        )
        ours = _attempts_reversal(payout, obj)
        if ours is not None:
            # The platform's reversal attempt in flight is in Stripe's report: settled.
            payout.record_reversal_success(reversal_id=ours.id, request_id=None)
            return [payout], StripeEventOutcome.APPLIED, event_service_id, "reversal settled"
        if settled or reversed_now:
            detail = "settled" if settled else "reversal recorded"
            return [payout], StripeEventOutcome.APPLIED, event_service_id, detail
        return [], StripeEventOutcome.RECORDED, event_service_id, None


def _attempts_reversal(payout: PayoutAggregate, obj: Mapping[str, Any]) -> StripeReversal | None:
    """The reversal of the payout's reversal attempt in flight, if the transfer lists it.

    Stripe's transfer object embeds its newest reversals (``reversals.data``); the
    attempt's is the one with its ``payout_id`` and ``reversal_attempt`` metadata,
    and the claimed amount and currency.
    """
    if payout.reversal_status is not ReversalStatus.IN_FLIGHT:
        return None
    listed = obj.get("reversals")
    data = listed.get("data") if isinstance(listed, Mapping) else None
    if not isinstance(data, list):
        return None
    for item in data:
        if not isinstance(item, Mapping):
            continue
        try:
            reversal = StripeReversal.from_stripe(item)
        except (KeyError, TypeError, ValueError, OverflowError):
            continue
        if (
            reversal.metadata.get("payout_id") == str(payout.id)
            and reversal.metadata.get("reversal_attempt") == str(payout.reversal_attempt)
            and reversal.transfer == payout.transfer_id
            and (reversal.amount, reversal.currency) == (payout.reversal_amount, payout.currency)
        ):
            return reversal
    return None


def _parse_stripe_event(event: Mapping[str, Any]) -> tuple[str, str, Mapping[str, Any]]:
    if not isinstance(event, Mapping):
        raise InvalidRequestError("a Stripe event is a JSON object")
    event_id, event_type, data = event.get("id"), event.get("type"), event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
        raise InvalidRequestError("a Stripe event needs a string id and type")
    if not isinstance(obj, Mapping):
        raise InvalidRequestError("a Stripe event needs data.object")
    return event_id, event_type, obj


def _event_account(event: Mapping[str, Any]) -> str | None:
    """The connected account an event belongs to (None: the platform's own)."""
    account = event.get("account")
    if account is None:
        return None
    if not isinstance(account, str) or not account:
        raise InvalidRequestError("a Stripe event's account is a connected account id")
    return account


def _event_livemode(event: Mapping[str, Any]) -> bool | None:
    livemode = event.get("livemode")
    if livemode is not None and not isinstance(livemode, bool):
        raise InvalidRequestError("a Stripe event's livemode is true or false")
    return livemode


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None

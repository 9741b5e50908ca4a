"""Reconciliation: do the ledger's books agree with Stripe's transfers?

[`reconcile`][payout_ledger.service.reconcile.reconcile] compares the payouts of a set
of event services, or of a time window, with the transfers Stripe lists, and
reports every disagreement. Stripe has no metadata search for transfers, so
transfers are listed by ``transfer_group`` (the one the payout recorded: the
host's own, or ``event_service:{id}``) or by ``created`` and matched on their
``payout_id`` metadata.

**Reversals.** The transfer's ``amount_reversed`` at Stripe is compared with the
ledger's (webhook-reported and platform reversals alike). Stripe above the
ledger is ``reversed``; the ledger above Stripe is ``reversed_in_ledger_only``
(the ledger counts money back that Stripe never took back). A platform reversal
in flight (a ``ReversalStarted`` without an outcome) may or may not exist at
Stripe yet: when Stripe's figure lies between the claim's ``reversed_before``
and ``reversed_before + amount``, both are consistent with the books, and the
payout is listed in ``reversals_in_flight`` (to settle with ``resume``), not as
a mismatch. Stripe above ``reversed_before + amount`` is still ``reversed``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, cast
from uuid import UUID

from payout_ledger.adapters import telemetry
from payout_ledger.domain.payout import (
    PayoutAggregate,
    PayoutStatus,
    ReversalStatus,
    transfer_group,
)
from payout_ledger.errors import ConfigurationError, InvalidRequestError
from payout_ledger.service.attempts import SIMULATED_PREFIX
from payout_ledger.service.ledger import PayoutLedger
from payout_ledger.service.ports import StripeTransfer

__all__ = ["Mismatch", "MismatchKind", "ReconcileReport", "reconcile"]

_PAGE = 500

logger = logging.getLogger("payout_ledger")


class MismatchKind(StrEnum):
    """The ways the ledger and Stripe can disagree."""

    MISSING_IN_LEDGER = "missing_in_ledger"
    """Stripe has a transfer of ours that the ledger has not recorded."""
    MISSING_AT_STRIPE = "missing_at_stripe"
    """The ledger records a transfer that Stripe does not list."""
    AMOUNT = "amount"
    CURRENCY = "currency"
    DESTINATION = "destination"
    REVERSED = "reversed"
    """Stripe shows more reversed than the ledger has recorded (more than a
    reversal in flight could account for)."""
    REVERSED_IN_LEDGER_ONLY = "reversed_in_ledger_only"
    """The ledger records more reversed than Stripe shows: money counted back that
    Stripe never took back."""
    DUPLICATE_TRANSFER = "duplicate_transfer"
    """Stripe has more than one transfer for one payout."""
    SIMULATED = "simulated"
    """The ledger records a simulated transfer (Stripe was disabled): the payout
    counts as released, but no money moved. A real store must have none."""
    REVERSAL_IN_FLIGHT = "reversal_in_flight"
    """Not a mismatch: a platform reversal is in flight and Stripe's reversed
    amount agrees with it having been made or not. Listed in
    ``ReconcileReport.reversals_in_flight``; ``resume`` settles it."""


@dataclass(frozen=True)
class Mismatch:
    """One disagreement between the ledger and Stripe."""

    kind: MismatchKind
    event_service_id: str | None
    transfer_id: str | None
    ledger: Any = None
    stripe: Any = None


@dataclass
class ReconcileReport:
    """What was compared and what disagreed."""

    payouts_checked: int = 0
    transfers_checked: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    reversals_in_flight: list[Mismatch] = field(default_factory=list)
    """Platform reversals in flight that Stripe's figures agree with either way
    (kind ``reversal_in_flight``; ``ledger`` is the claim, ``stripe`` Stripe's
    ``amount_reversed``): to settle, not disagreements. They leave ``ok`` true."""

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def as_dict(self) -> dict[str, Any]:
        return {
            "payouts_checked": self.payouts_checked,
            "transfers_checked": self.transfers_checked,
            "ok": self.ok,
            "mismatches": [asdict(m) for m in self.mismatches],
            "reversals_in_flight": [asdict(m) for m in self.reversals_in_flight],
        }


@telemetry.traced("payout_ledger.reconcile", lambda report: _described(report))
def reconcile(
    ledger: PayoutLedger,
    *,
    event_service_ids: Iterable[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> ReconcileReport:
    """Compare the ledger with Stripe for some event services or a time window.

    With ``event_service_ids``, each service's payout is compared with the
    transfers in the ``transfer_group`` it recorded (``event_service:{id}`` for
    a service the ledger has no payout for). Otherwise every transfer Stripe
    created in ``[since, until)`` is compared with every transfer the ledger
    recorded in that window. Raises
    [`TransferOutcomeUnknown`][payout_ledger.TransferOutcomeUnknown] when
    Stripe cannot be asked: a partial comparison is not a clean bill.
    """
    gateway = ledger.gateway
    if gateway is None:
        raise ConfigurationError("reconcile needs the ledger's transfer gateway")
    report = ReconcileReport()
    payouts: dict[UUID, PayoutAggregate] = {}
    stripe_side: list[StripeTransfer] = []
    if event_service_ids is not None:
        for event_service_id in event_service_ids:
            payout = ledger.find_payout(event_service_id)
            group = transfer_group(event_service_id)
            if payout is not None:
                payouts[payout.id] = payout
                group = payout.transfer_group
            stripe_side.extend(gateway.list_transfers(transfer_group=group))
    else:
        gte = int(since.timestamp()) if since else None
        lt = int(until.timestamp()) if until else None
        stripe_side.extend(gateway.list_transfers(created_gte=gte, created_lt=lt))
        for payout in _payouts_transferred_between(ledger, since, until):
            payouts[payout.id] = payout
    ours = [t for t in stripe_side if "payout_id" in t.metadata]
    report.transfers_checked = len(ours)
    by_payout: dict[str, list[StripeTransfer]] = {}
    for transfer in ours:
        by_payout.setdefault(transfer.metadata["payout_id"], []).append(transfer)
        if _payout_uuid(transfer) not in payouts:
            payout = _load(ledger, transfer)
            if payout is not None:
                payouts[payout.id] = payout
    report.payouts_checked = len(payouts)
    for payout in payouts.values():
        for found in _compare(payout, by_payout.pop(str(payout.id), [])):
            if found.kind is MismatchKind.REVERSAL_IN_FLIGHT:
                report.reversals_in_flight.append(found)
            else:
                report.mismatches.append(found)
    for transfers in by_payout.values():  # ours by metadata, unknown to the ledger
        report.mismatches.extend(
            Mismatch(
                MismatchKind.MISSING_IN_LEDGER,
                t.metadata.get("event_service_id"),
                t.id,
                None,
                _summary(t),
            )
            for t in transfers
        )
    _observe(report)
    return report


def _observe(report: ReconcileReport) -> None:
    """Count the report's mismatches by kind, and log it (with the counts as extras)."""
    kinds = Counter(m.kind.value for m in report.mismatches)
    for kind, n in sorted(kinds.items()):
        telemetry.count_reconcile_mismatch(kind, n)
    logger.log(
        logging.WARNING if kinds else logging.INFO,
        "reconcile: %d payouts and %d transfers checked, %d mismatches",
        report.payouts_checked,
        report.transfers_checked,
        len(report.mismatches),
        extra=telemetry.extras(
            payouts_checked=report.payouts_checked,
            transfers_checked=report.transfers_checked,
            mismatches=dict(sorted(kinds.items())),
            reversals_in_flight=len(report.reversals_in_flight),
            outcome="ok" if report.ok else "mismatches",
        ),
    )


def _described(report: ReconcileReport) -> dict[str, int | bool]:
    """A reconciliation's span attributes: what was checked and how much disagreed."""
    return {
        "payouts_checked": report.payouts_checked,
        "transfers_checked": report.transfers_checked,
        "mismatches": len(report.mismatches),
        "ok": report.ok,
    }


def _compare(payout: PayoutAggregate, transfers: list[StripeTransfer]) -> list[Mismatch]:
    es = payout.event_service_id
    recorded = payout.transfer_id if payout.is_paid else None
    found: list[Mismatch] = []
    if len(transfers) > 1:
        found.append(
            Mismatch(
                MismatchKind.DUPLICATE_TRANSFER,
                es,
                None,
                recorded,
                [t.id for t in transfers],
            )
        )
    match = next((t for t in transfers if t.id == recorded), None)
    for t in transfers:
        if t.id != recorded:
            found.append(
                Mismatch(MismatchKind.MISSING_IN_LEDGER, es, t.id, payout.status.value, _summary(t))
            )
    if recorded is None:
        return found
    if recorded.startswith(SIMULATED_PREFIX):
        found.append(Mismatch(MismatchKind.SIMULATED, es, recorded, recorded, None))
        return found
    if match is None:
        found.append(Mismatch(MismatchKind.MISSING_AT_STRIPE, es, recorded, recorded, None))
        return found
    for kind, ours, theirs in (
        (MismatchKind.AMOUNT, payout.amount, match.amount),
        (MismatchKind.CURRENCY, payout.currency, match.currency),
        (MismatchKind.DESTINATION, payout.destination_account, match.destination),
    ):
        if ours != theirs:
            found.append(Mismatch(kind, es, match.id, ours, theirs))
    found.extend(_compare_reversed(payout, match))
    return found


def _compare_reversed(payout: PayoutAggregate, match: StripeTransfer) -> list[Mismatch]:
    es, ours, theirs = payout.event_service_id, payout.amount_reversed, match.amount_reversed
    if theirs < ours:
        return [Mismatch(MismatchKind.REVERSED_IN_LEDGER_ONLY, es, match.id, ours, theirs)]
    if payout.reversal_status is ReversalStatus.IN_FLIGHT:
        before, amount = payout.reversal_reversed_before, payout.reversal_amount
        if before <= theirs <= before + amount:
            claim = {
                "amount_reversed": ours,
                "reversal_attempt": payout.reversal_attempt,
                "reference": payout.reversal_reference,
                "amount": amount,
                "reversed_before": before,
            }
            return [Mismatch(MismatchKind.REVERSAL_IN_FLIGHT, es, match.id, claim, theirs)]
    if theirs > ours:
        return [Mismatch(MismatchKind.REVERSED, es, match.id, ours, theirs)]
    return []


def _payouts_transferred_between(
    ledger: PayoutLedger, since: datetime | None, until: datetime | None
) -> Iterable[PayoutAggregate]:
    seen: set[UUID] = set()
    start = 1
    topics = [PayoutAggregate.TransferSucceeded.TOPIC]
    while True:
        page = ledger.recorder.select_notifications(start, _PAGE, topics=topics)
        if not page:
            return
        for notification in page:
            event = cast(PayoutAggregate.Event, ledger.mapper.to_domain_event(notification))
            in_window = (since is None or event.timestamp >= since) and (
                until is None or event.timestamp < until
            )
            payout_id = UUID(str(event.originator_id))
            if in_window and payout_id not in seen:
                seen.add(payout_id)
                payout = ledger.get_payout_by_id(payout_id)
                if payout.status is not PayoutStatus.IN_FLIGHT:
                    yield payout
        start = page[-1].id + 1


def _payout_uuid(transfer: StripeTransfer) -> UUID | None:
    try:
        return UUID(transfer.metadata["payout_id"])
    except (KeyError, ValueError):
        return None


def _load(ledger: PayoutLedger, transfer: StripeTransfer) -> PayoutAggregate | None:
    event_service_id = transfer.metadata.get("event_service_id")
    if not event_service_id:
        return None
    try:
        payout = ledger.find_payout(event_service_id)
    except InvalidRequestError:
        return None  # metadata no payout of ours could have: not a transfer of this ledger
    if payout is None or str(payout.id) != transfer.metadata.get("payout_id"):
        return None
    return payout


def _summary(t: StripeTransfer) -> dict[str, Any]:
    return {
        "id": t.id,
        "amount": t.amount,
        "currency": t.currency,
        "destination": t.destination,
        "attempt": t.metadata.get("attempt"),
        "amount_reversed": t.amount_reversed,
    }

"""The audit: replay every payout from the log and check the money rules.

[`audit_ledger`][payout_ledger.audit.audit_ledger] reads the log once, in
notification order, a page at a time. It keeps a compact summary per payout
(never the events) and checks, for every event as it arrives:

| rule | violation |
|---|---|
| at most one successful transfer per event service | ``double_transfer`` |
| every transfer id belongs to one payout | ``transfer_id_reused`` |
| ``Released`` only after the payout's own ``TransferSucceeded`` | ``release_without_transfer`` |
| reversals never exceed the amount transferred | ``reversal_exceeds_amount`` |
| a reversal names the payout's transfer | ``reversal_without_transfer`` |
| an attempt is concluded before the next one starts | ``attempt_without_outcome`` |
| an outcome concludes the attempt in flight | ``outcome_without_attempt`` |
| every stored event can be read | ``undecodable`` |
| every field the audit folds has its declared type | ``ill_typed`` |
| a later attempt keeps the payout's amount, currency and provider | ``attempt_terms_changed`` |
| a transfer has its attempt's amount, currency and destination | ``transfer_unlike_claim`` |
| every stored event has a topic of the ledger's own events | ``undecodable`` |
| every row has a notification id (PostgreSQL) | ``hidden_row`` |
| a real store (Stripe enabled) records no simulated transfer | ``simulated_in_real_store`` |
| a simulated store records no real transfer | ``real_in_simulated_store`` |
| ``ReversalStarted`` only on a paid payout, naming its transfer | ``reversal_without_transfer`` |
| one reversal attempt in flight at a time | ``reversal_without_outcome`` |
| reversal attempts numbered 1, 2, 3... | ``reversal_out_of_sequence`` |
| a reversal attempt's key is ``reverse_payment.attempt{N}:{service}`` | ``reversal_key_mismatch`` |
| a reversal claims a positive amount in the payout's currency | ``reversal_unlike_payout`` |
| a reversal claims no more than is not yet reversed | ``reversal_exceeds_amount`` |
| ``reversed_before`` is what was reversed; | ``reversal_amounts_inconsistent`` |
| ``amount_reversed >= reversed_before + amount`` | ``reversal_amounts_inconsistent`` |
| a reversal outcome concludes the attempt in flight | ``reversal_outcome_without_attempt`` |
| ... with its claim's reference, key and amount | ``reversal_unlike_claim`` |

A payout whose last attempt has no outcome yet is not a violation: it is
reported as in flight, and so is a reversal attempt without an outcome.
Totals are given per currency and per provider.

The rules themselves are in ``payout_ledger.audit.rules``, the totals in
``payout_ledger.audit.totals`` and the report's types in ``payout_ledger.audit.report``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from eventsourcing.utils import get_topic

from payout_ledger.adapters import telemetry
from payout_ledger.adapters.log import (
    DEFAULT_PAGE_SIZE,
    ILL_TYPED_ROW,
    PageCallback,
    StateDecoder,
    hidden_rows,
    iter_notifications,
    iter_states,
)
from payout_ledger.audit.report import (
    AuditReport,
    CurrencyTotals,
    InFlightPayout,
    InFlightReversal,
    PayoutSummary,
    ProviderTotals,
    ReversalSummary,
    Violation,
    ViolationKind,
)
from payout_ledger.audit.rules import Auditor
from payout_ledger.audit.totals import add_totals
from payout_ledger.domain.account import ConnectedAccount
from payout_ledger.domain.payout import PayoutAggregate
from payout_ledger.domain.seal import LedgerSeal
from payout_ledger.domain.store_mode import StoreModeRecord
from payout_ledger.domain.stripe_events import CapturedPayment, StripeEventRecord

if TYPE_CHECKING:
    from payout_ledger.service.ledger import PayoutLedger

__all__ = [
    "AuditReport",
    "CurrencyTotals",
    "InFlightPayout",
    "InFlightReversal",
    "PayoutSummary",
    "ProviderTotals",
    "ReversalSummary",
    "Violation",
    "ViolationKind",
    "audit_ledger",
]


Decode = Literal["states", "mapper"]
"""How the audit decodes events; see [`audit_ledger`][payout_ledger.audit.audit_ledger]."""


@telemetry.traced(
    "payout_ledger.audit",
    lambda report: {
        "events": report.events,
        "payouts": report.payouts,
        "violations": len(report.violations),
        "ok": report.ok,
    },
)
def audit_ledger(
    ledger: PayoutLedger,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    on_page: PageCallback | None = None,
    keep_summaries: Callable[[dict[int, PayoutSummary]], None] | None = None,
    decode: Decode = "states",
) -> AuditReport:
    """Replay the whole log once and check every payout; see the module docs.

    ``on_page(last_id, count)`` is called after each page (for a progress bar).
    ``keep_summaries`` receives the per-payout summaries at the end, keyed by
    payout id as an int, each with its event service id (the payouts export
    uses it; it takes more memory). ``decode="states"`` (the
    default) folds each event's decoded, upcast state without building event
    objects (see [`iter_states`][payout_ledger.adapters.log.iter_states] for why);
    ``decode="mapper"`` builds every event with ``ledger.mapper.to_domain_event``.
    """
    auditor = Auditor(keep_service_ids=keep_summaries is not None)
    folds = auditor.folds
    by_topic: dict[str, int] = {}
    report = AuditReport()
    finding = auditor.violations.append
    if decode == "mapper":
        for nid, key, version, topic, state in _mapper_states(ledger, page_size, on_page):
            report.events += 1
            report.last_notification_id = nid
            by_topic[topic] = by_topic.get(topic, 0) + 1
            if topic == ILL_TYPED_ROW:
                finding(_ill_typed(nid, key, version, topic, _BAD_COLUMNS))
            elif topic not in KNOWN_TOPICS:
                finding(_unknown_topic(nid, key, version, topic))
            elif isinstance(state, Exception):
                finding(_undecodable(nid, key, version, topic, state))
            elif state is not None:
                check, step = folds[topic]
                why = check(state)
                if why is not None:
                    finding(_ill_typed(nid, key, version, topic, why))
                    continue
                try:
                    step(state, nid, key, version)
                except (KeyError, TypeError) as exc:  # a malformed event is a finding
                    finding(_undecodable(nid, key, version, topic, exc))
    else:
        # The hot loop: one page of tuples at a time, no per-event objects but the state.
        decode_state = StateDecoder(ledger).decode
        for page in iter_states(ledger, page_size=page_size, on_page=on_page):
            for nid, oid, version, topic, stored in page:
                by_topic[topic] = by_topic.get(topic, 0) + 1
                fold = folds.get(topic)
                if fold is None:
                    if topic == ILL_TYPED_ROW:
                        finding(_ill_typed(nid, int(oid, 16), version, topic, _BAD_COLUMNS))
                    elif topic not in KNOWN_TOPICS:
                        finding(_unknown_topic(nid, int(oid, 16), version, topic))
                    continue
                key = 0
                try:
                    # 32 hex digits as written; SQLite text could be spelt otherwise.
                    key = int(oid, 16) if len(oid) == 32 else UUID(oid).int
                    state = decode_state(topic, stored)
                    why = fold[0](state)
                    if why is None:
                        fold[1](state, nid, key, version)
                    else:
                        finding(_ill_typed(nid, key, version, topic, why))
                except Exception as exc:  # a damaged or malformed event is a finding
                    finding(_undecodable(nid, key, version, topic, exc))
            report.events += len(page)
            report.last_notification_id = page[-1][0]

    for row_id, row_version, row_topic in hidden_rows(ledger):
        finding(
            Violation(
                kind=ViolationKind.HIDDEN_ROW,
                notification_id=None,
                payout_id=row_id,
                originator_version=row_version if type(row_version) is int else 0,
                event_type=str(row_topic).rsplit(":", 1)[-1],
                event_service_id=None,
                detail="a stored row without a notification id: the audit cannot place it, "
                "the ledger applies it",
            )
        )
    report.events_by_type = {t.rsplit(":", 1)[-1]: c for t, c in by_topic.items()}
    report.violations = [_named(ledger, v) for v in auditor.violations]
    report.payouts = len(auditor.payouts)
    add_totals(report, auditor.payouts, auditor.captured)
    report.reversals_in_flight = [
        r
        if r.event_service_id
        else replace(r, event_service_id=_service_named(ledger, r.payout_id))
        for r in report.reversals_in_flight
    ]
    if keep_summaries is not None:
        keep_summaries(auditor.payouts)
    return report


_Folded = tuple[int, int, int, str, "dict[str, Any] | Exception | None"]
"""(notification id, payout id as int, version, topic, state: a dict, an error, or None)."""


def _mapper_states(
    ledger: PayoutLedger, page_size: int, on_page: PageCallback | None
) -> Iterator[_Folded]:
    wanted = _AUDITED_TOPICS
    to_domain_event = ledger.mapper.to_domain_event
    for n in iter_notifications(ledger, page_size=page_size, on_page=on_page):
        key, topic = UUID(str(n.originator_id)).int, n.topic
        if topic not in wanted:
            yield n.id, key, n.originator_version, topic, None
            continue
        try:
            state = vars(to_domain_event(n))
        except Exception as exc:  # a damaged event is a finding
            yield n.id, key, n.originator_version, topic, exc
        else:
            yield n.id, key, n.originator_version, topic, state


def _named(ledger: PayoutLedger, violation: Violation) -> Violation:
    """The violation with its event service id (read back from the payout's first event)."""
    if violation.event_service_id is not None:
        return violation
    service = _service_named(ledger, violation.payout_id)
    return replace(violation, event_service_id=service) if service else violation


def _service_named(ledger: PayoutLedger, payout_id: str) -> str:
    """The event service of a payout, read back from its first event ("" if unreadable)."""
    try:
        [first] = ledger.events.get(UUID(payout_id), lte=1)
    except Exception:
        return ""
    service = getattr(first, "event_service_id", None)
    return service if isinstance(service, str) else ""


_BAD_COLUMNS = "the stored row's columns have impossible types (an edited SQLite file)"

KNOWN_TOPICS = frozenset(
    get_topic(cls)
    for cls in (
        PayoutAggregate.PayoutStarted,
        PayoutAggregate.TransferFailed,
        PayoutAggregate.TransferSucceeded,
        PayoutAggregate.Released,
        PayoutAggregate.TransferReversed,
        PayoutAggregate.ReversalStarted,
        PayoutAggregate.ReversalSucceeded,
        PayoutAggregate.ReversalFailed,
        StripeEventRecord.StripeEventReceived,
        CapturedPayment.PaymentCaptured,
        ConnectedAccount.PayabilityReported,
        LedgerSeal.Sealed,
        StoreModeRecord.ModeDeclared,
    )
)
"""Every topic the ledger writes. Any other (another import path that resolves to
the same class, a made-up name) is a row the ledger did not write: undecodable."""


def _unknown_topic(nid: int, key: int, version: int, topic: str) -> Violation:
    return _undecodable(
        nid, key, version, topic, ValueError(f"topic {topic!r} is not one the ledger writes")
    )


def _ill_typed(nid: int, key: int, version: int, topic: str, why: str) -> Violation:
    event_type = topic.rsplit(":", 1)[-1]
    return Violation(
        kind=ViolationKind.ILL_TYPED,
        notification_id=nid,
        payout_id=str(UUID(int=key)),
        originator_version=version,
        event_type=event_type,
        event_service_id=None,
        detail=f"{event_type} is not folded: {why}",
    )


def _undecodable(nid: int, key: int, version: int, topic: str, exc: Exception) -> Violation:
    return Violation(
        kind=ViolationKind.UNDECODABLE,
        notification_id=nid,
        payout_id=str(UUID(int=key)),
        originator_version=version,
        event_type=topic.rsplit(":", 1)[-1],
        event_service_id=None,
        detail=f"cannot read the stored event: {type(exc).__name__}: {exc}",
    )


_AUDITED_TOPICS = frozenset(
    {
        PayoutAggregate.PayoutStarted.TOPIC,
        PayoutAggregate.TransferFailed.TOPIC,
        PayoutAggregate.TransferSucceeded.TOPIC,
        PayoutAggregate.Released.TOPIC,
        PayoutAggregate.TransferReversed.TOPIC,
        PayoutAggregate.ReversalStarted.TOPIC,
        PayoutAggregate.ReversalSucceeded.TOPIC,
        PayoutAggregate.ReversalFailed.TOPIC,
        CapturedPayment.PaymentCaptured.TOPIC,
        StoreModeRecord.ModeDeclared.TOPIC,
    }
)

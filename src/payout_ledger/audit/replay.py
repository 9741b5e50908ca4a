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

A payout whose last attempt has no outcome yet is not a violation: it is
reported as in flight. Totals are given per currency and per provider.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from eventsourcing.utils import get_topic

from payout_ledger.audit.stream import (
    DEFAULT_PAGE_SIZE,
    ILL_TYPED_ROW,
    PageCallback,
    StateDecoder,
    hidden_rows,
    iter_notifications,
    iter_states,
)
from payout_ledger.audit.typecheck import TypeCheck, type_check
from payout_ledger.chain import LedgerSeal
from payout_ledger.payout import PayoutAggregate, PayoutStatus
from payout_ledger.store_mode import StoreMode, StoreModeRecord
from payout_ledger.stripe_events import CapturedPayment, StripeEventRecord

if TYPE_CHECKING:
    from payout_ledger.ledger import PayoutLedger

__all__ = [
    "AuditReport",
    "CurrencyTotals",
    "InFlightPayout",
    "PayoutSummary",
    "ProviderTotals",
    "Violation",
    "ViolationKind",
    "audit_ledger",
]


class ViolationKind(StrEnum):
    """The rules an audit checks."""

    DOUBLE_TRANSFER = "double_transfer"
    """A second ``TransferSucceeded`` for one event service: money moved twice."""
    TRANSFER_ID_REUSED = "transfer_id_reused"
    """A transfer id already recorded for another payout."""
    RELEASE_WITHOUT_TRANSFER = "release_without_transfer"
    """``Released`` without the payout's own ``TransferSucceeded`` before it (or twice)."""
    REVERSAL_EXCEEDS_AMOUNT = "reversal_exceeds_amount"
    """More reversed than the transfer's amount."""
    REVERSAL_WITHOUT_TRANSFER = "reversal_without_transfer"
    """A reversal of a transfer the payout does not have."""
    ATTEMPT_WITHOUT_OUTCOME = "attempt_without_outcome"
    """A new attempt started while the previous one had no recorded outcome."""
    OUTCOME_WITHOUT_ATTEMPT = "outcome_without_attempt"
    """A failure or success recorded for an attempt that is not in flight."""
    UNDECODABLE = "undecodable"
    """A stored event that cannot be read (damaged, or the wrong cipher key)."""
    ATTEMPT_TERMS_CHANGED = "attempt_terms_changed"
    """A later attempt claims another amount, currency or provider than the
    payout's first: the ledger never writes one (a release with other terms is
    refused), so the log was written behind its back."""
    TRANSFER_UNLIKE_CLAIM = "transfer_unlike_claim"
    """A ``TransferSucceeded`` whose amount, currency or destination is not its
    attempt's claim."""
    SIMULATED_IN_REAL_STORE = "simulated_in_real_store"
    """A simulated transfer (Stripe disabled: no money moved) in a store whose
    money is real: a payout counted as released that nobody was paid. A store
    that never recorded its mode is judged by its first transfer."""
    REAL_IN_SIMULATED_STORE = "real_in_simulated_store"
    """A real transfer in a store recorded as simulated (development)."""
    HIDDEN_ROW = "hidden_row"
    """A row without a notification id (PostgreSQL, after its NOT NULL was dropped):
    no reader in notification order sees it, yet the ledger loads it with its payout."""
    ILL_TYPED = "ill_typed"
    """A stored event whose folded fields do not have their declared types (an
    amount that is a string, an attempt that is a float or a bool...): it is
    left out of the payout's summary and the totals."""


@dataclass(frozen=True)
class Violation:
    """One broken rule, naming the event that broke it."""

    kind: ViolationKind
    notification_id: int | None
    """None for a row that has none (``hidden_row``)."""
    payout_id: str
    originator_version: int
    event_type: str
    event_service_id: str | None
    detail: str


@dataclass(frozen=True)
class InFlightPayout:
    """A payout whose current attempt has no recorded outcome."""

    event_service_id: str
    payout_id: str
    attempt: int
    amount: int
    currency: str
    started_notification_id: int


@dataclass
class CurrencyTotals:
    """Money per currency (minor units)."""

    currency: str
    payouts: int = 0
    released: int = 0
    released_amount: int = 0
    reversed_amount: int = 0
    in_flight: int = 0
    in_flight_amount: int = 0
    failed: int = 0
    captured: int = 0
    captured_amount: int = 0

    @property
    def net_amount(self) -> int:
        """Released minus reversed: what the providers kept."""
        return self.released_amount - self.reversed_amount


@dataclass
class ProviderTotals:
    """Money per provider and currency (minor units)."""

    provider_id: str
    currency: str
    payouts: int = 0
    released: int = 0
    released_amount: int = 0
    reversed_amount: int = 0
    in_flight: int = 0

    @property
    def net_amount(self) -> int:
        return self.released_amount - self.reversed_amount


class PayoutSummary:
    """What the audit keeps per payout: a handful of fields, never the events."""

    __slots__ = (
        "amount",
        "attempt",
        "currency",
        "destination",
        "event_service_id",
        "failed",
        "key",
        "open_since",
        "provider_id",
        "released_transfer",
        "reversed",
        "successes",
        "transfer_id",
        "version",
    )

    def __init__(
        self, key: int, event_service_id: str, provider_id: str, amount: int, currency: str
    ) -> None:
        self.key = key
        """The payout id as an int (``UUID(int=key)``)."""
        self.event_service_id: str | None = event_service_id
        """None once the payout has no attempt in flight, unless the audit keeps them all."""
        self.provider_id = provider_id
        self.amount = amount
        self.currency = currency
        self.attempt = 0
        self.destination: str | None = None
        """The destination claimed by the attempt in flight (None once concluded)."""
        self.open_since: int | None = None
        """Notification id of the attempt in flight, if any."""
        self.successes = 0
        self.failed = False
        self.released_transfer: str | None = None
        """The transfer id of the last ``Released``."""
        self.transfer_id: str | None = None
        self.reversed = 0
        self.version = 0

    @property
    def released(self) -> bool:
        return self.released_transfer is not None

    @property
    def status(self) -> PayoutStatus:
        """The status the aggregate would have."""
        if self.open_since is not None:
            return PayoutStatus.IN_FLIGHT
        if self.released:
            if self.amount and self.reversed >= self.amount:
                return PayoutStatus.REVERSED
            return PayoutStatus.RELEASED
        if self.successes:
            return PayoutStatus.TRANSFERRED
        return PayoutStatus.FAILED

    @property
    def payout_id(self) -> UUID:
        return UUID(int=self.key)

    def as_dict(self) -> dict[str, Any]:
        return {
            "event_service_id": self.event_service_id,
            "payout_id": str(self.payout_id),
            "provider_id": self.provider_id,
            "status": self.status.value,
            "amount": self.amount,
            "currency": self.currency,
            "attempts": self.attempt,
            "transfer_id": self.transfer_id,
            "amount_reversed": self.reversed,
            "version": self.version,
        }


@dataclass
class AuditReport:
    """Everything an audit found."""

    events: int = 0
    last_notification_id: int = 0
    payouts: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)
    currencies: list[CurrencyTotals] = field(default_factory=list)
    providers: list[ProviderTotals] = field(default_factory=list)
    in_flight: list[InFlightPayout] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No rule was broken."""
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "last_notification_id": self.last_notification_id,
            "payouts": self.payouts,
            "events_by_type": dict(sorted(self.events_by_type.items())),
            "currencies": [{**asdict(c), "net_amount": c.net_amount} for c in self.currencies],
            "providers": [{**asdict(p), "net_amount": p.net_amount} for p in self.providers],
            "in_flight": [asdict(p) for p in self.in_flight],
            "violations": [asdict(v) for v in self.violations],
        }


_Handler = Callable[[dict[str, Any], int, int, int], None]
"""A rule-checking fold step: (event state, notification id, payout id as int, version)."""

_Fold = tuple[TypeCheck, _Handler]
"""The type check of the fields a fold step reads, and the step."""

_FOLDED: dict[type, tuple[str, ...]] = {
    PayoutAggregate.PayoutStarted: (
        "event_service_id",
        "provider_id",
        "amount",
        "currency",
        "attempt",
        "destination_account",
    ),
    PayoutAggregate.TransferFailed: ("attempt",),
    PayoutAggregate.TransferSucceeded: (
        "attempt",
        "transfer_id",
        "simulated",
        "amount",
        "currency",
        "destination_account",
    ),
    PayoutAggregate.Released: ("transfer_id",),
    PayoutAggregate.TransferReversed: ("transfer_id", "amount_reversed"),
    CapturedPayment.PaymentCaptured: ("currency", "amount"),
    StoreModeRecord.ModeDeclared: ("mode",),
}
"""The fields each fold step reads: checked before it runs, so nothing ill-typed is folded."""


class _Auditor:
    """Folds event states into per-payout summaries and records violations.

    Payouts are keyed by their id as an int (44 bytes, where a UUID object
    takes 100 and its text 80). A payout keeps its event service id only while
    an attempt is in flight (to list it), unless ``keep_service_ids``: the
    violations name theirs at the end. This keeps 1M events under 200 MB.
    """

    def __init__(self, *, keep_service_ids: bool) -> None:
        self.keep_service_ids = keep_service_ids
        self.payouts: dict[int, PayoutSummary] = {}
        self.transfers: dict[str, PayoutSummary] = {}
        """Each transfer id's payout (the summary itself: no second copy of the key)."""
        self.violations: list[Violation] = []
        self.captured: dict[str, list[int]] = {}
        steps: dict[type, _Handler] = {
            PayoutAggregate.PayoutStarted: self.started,
            PayoutAggregate.TransferFailed: self.failed,
            PayoutAggregate.TransferSucceeded: self.succeeded,
            PayoutAggregate.Released: self.released,
            PayoutAggregate.TransferReversed: self.reversed,
            CapturedPayment.PaymentCaptured: self.captured_payment,
            StoreModeRecord.ModeDeclared: self.mode_declared,
        }
        self.simulated: bool | None = None
        """Whether the store's money is simulated: its recorded mode, else its first transfer."""
        self.folds: dict[str, _Fold] = {
            get_topic(cls): (type_check(cls, _FOLDED[cls]), step) for cls, step in steps.items()
        }

    def violate(
        self, kind: ViolationKind, event_type: str, nid: int, key: int, version: int, detail: str
    ) -> None:
        payout = self.payouts.get(key)
        self.violations.append(
            Violation(
                kind=kind,
                notification_id=nid,
                payout_id=str(UUID(int=key)),
                originator_version=version,
                event_type=event_type,
                event_service_id=payout.event_service_id if payout else None,
                detail=detail,
            )
        )

    def started(self, e: dict[str, Any], nid: int, key: int, version: int) -> None:
        p = self.payouts.get(key)
        attempt = e["attempt"]
        if p is None:
            intern = sys.intern
            p = PayoutSummary(
                key,
                e["event_service_id"],
                intern(e["provider_id"]),
                e["amount"],
                intern(e["currency"]),
            )
            self.payouts[key] = p
        else:
            if p.open_since is not None:
                self.violate(
                    ViolationKind.ATTEMPT_WITHOUT_OUTCOME,
                    "PayoutStarted",
                    nid,
                    key,
                    version,
                    f"attempt {attempt} started while attempt {p.attempt} "
                    f"(notification {p.open_since}) has no outcome",
                )
            terms = (e["amount"], e["currency"], e["provider_id"])
            if terms != (p.amount, p.currency, p.provider_id):
                self.violate(
                    ViolationKind.ATTEMPT_TERMS_CHANGED,
                    "PayoutStarted",
                    nid,
                    key,
                    version,
                    f"attempt {attempt} claims {terms[0]} {terms[1]} for {terms[2]}, the "
                    f"payout is {p.amount} {p.currency} for {p.provider_id}",
                )
        p.attempt = attempt
        p.destination = e["destination_account"]
        p.open_since = nid
        p.failed = False
        p.version = version
        p.event_service_id = e["event_service_id"]

    def _concludes(
        self, e: dict[str, Any], event_type: str, nid: int, key: int, version: int
    ) -> PayoutSummary | None:
        p = self.payouts.get(key)
        attempt = e["attempt"]
        if p is None or p.open_since is None or attempt != p.attempt:
            current = "no payout" if p is None else f"attempt {p.attempt} in flight"
            if p is not None and p.open_since is None:
                current = f"attempt {p.attempt} already concluded"
            self.violate(
                ViolationKind.OUTCOME_WITHOUT_ATTEMPT,
                event_type,
                nid,
                key,
                version,
                f"{event_type} for attempt {attempt}, but {current}",
            )
        return p

    def failed(self, e: dict[str, Any], nid: int, key: int, version: int) -> None:
        p = self._concludes(e, "TransferFailed", nid, key, version)
        if p is not None:
            p.open_since = None
            p.destination = None
            p.failed = True
            p.version = version

    def mode_declared(self, e: dict[str, Any], nid: int, key: int, version: int) -> None:
        self.simulated = e["mode"] == StoreMode.SIMULATED.value

    def succeeded(self, e: dict[str, Any], nid: int, key: int, version: int) -> None:
        simulated = e.get("simulated", False)
        if self.simulated is None:
            self.simulated = simulated
        elif simulated != self.simulated:
            self.violate(
                ViolationKind.SIMULATED_IN_REAL_STORE
                if simulated
                else ViolationKind.REAL_IN_SIMULATED_STORE,
                "TransferSucceeded",
                nid,
                key,
                version,
                f"transfer {e['transfer_id']} is {'simulated' if simulated else 'real'} in a "
                f"{'simulated' if self.simulated else 'real'} store",
            )
        p = self._concludes(e, "TransferSucceeded", nid, key, version)
        if p is None:
            return
        transfer_id = e["transfer_id"]
        moved = (e["amount"], e["currency"], e["destination_account"])
        if p.open_since is not None and moved != (p.amount, p.currency, p.destination):
            self.violate(
                ViolationKind.TRANSFER_UNLIKE_CLAIM,
                "TransferSucceeded",
                nid,
                key,
                version,
                f"transfer {transfer_id} moved {moved[0]} {moved[1]} to {moved[2]}, attempt "
                f"{p.attempt} claimed {p.amount} {p.currency} to {p.destination}",
            )
        p.destination = None
        owner = self.transfers.setdefault(transfer_id, p)
        if owner is not p:
            self.violate(
                ViolationKind.TRANSFER_ID_REUSED,
                "TransferSucceeded",
                nid,
                key,
                version,
                f"transfer {transfer_id} is already recorded for payout {owner.payout_id}",
            )
        p.successes += 1
        if p.successes > 1:
            self.violate(
                ViolationKind.DOUBLE_TRANSFER,
                "TransferSucceeded",
                nid,
                key,
                version,
                f"transfer {transfer_id} after transfer {p.transfer_id}: "
                f"{p.successes} successful transfers for one event service",
            )
        p.transfer_id = transfer_id
        p.open_since = None
        p.failed = False
        p.version = version
        if not self.keep_service_ids:
            p.event_service_id = None

    def released(self, e: dict[str, Any], nid: int, key: int, version: int) -> None:
        p = self.payouts.get(key)
        transfer_id = e["transfer_id"]
        twice = p is not None and p.released_transfer == transfer_id
        if p is None or not p.successes or p.transfer_id != transfer_id or twice:
            if twice:
                why = "that transfer was already released"
            elif p is None or not p.successes:
                why = "no TransferSucceeded before it"
            else:
                why = f"the payout's transfer is {p.transfer_id}"
            self.violate(
                ViolationKind.RELEASE_WITHOUT_TRANSFER,
                "Released",
                nid,
                key,
                version,
                f"Released of transfer {transfer_id}: {why}",
            )
        if p is not None:
            p.released_transfer = transfer_id
            p.version = version

    def reversed(self, e: dict[str, Any], nid: int, key: int, version: int) -> None:
        p = self.payouts.get(key)
        transfer_id, amount_reversed = e["transfer_id"], e["amount_reversed"]
        if p is None or not p.successes or p.transfer_id != transfer_id:
            has = "no transfer" if p is None or not p.successes else f"transfer {p.transfer_id}"
            self.violate(
                ViolationKind.REVERSAL_WITHOUT_TRANSFER,
                "TransferReversed",
                nid,
                key,
                version,
                f"reversal of transfer {transfer_id}, but the payout has {has}",
            )
        elif amount_reversed > p.amount:
            self.violate(
                ViolationKind.REVERSAL_EXCEEDS_AMOUNT,
                "TransferReversed",
                nid,
                key,
                version,
                f"{amount_reversed} reversed of a {p.amount} {p.currency} transfer",
            )
        if p is not None:
            p.reversed = max(p.reversed, amount_reversed)
            p.version = version

    def captured_payment(self, e: dict[str, Any], nid: int, key: int, version: int) -> None:
        totals = self.captured.setdefault(e["currency"], [0, 0])
        totals[0] += 1
        totals[1] += e["amount"]


Decode = Literal["states", "mapper"]
"""How the audit decodes events; see [`audit_ledger`][payout_ledger.audit.audit_ledger]."""


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
    objects (see [`iter_states`][payout_ledger.audit.stream.iter_states] for why);
    ``decode="mapper"`` builds every event with ``ledger.mapper.to_domain_event``.
    """
    auditor = _Auditor(keep_service_ids=keep_summaries is not None)
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
    _totals(report, auditor)
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
    try:
        [first] = ledger.events.get(UUID(violation.payout_id), lte=1)
    except Exception:
        return violation
    service = getattr(first, "event_service_id", None)
    return replace(violation, event_service_id=service) if isinstance(service, str) else violation


_BAD_COLUMNS = "the stored row's columns have impossible types (an edited SQLite file)"

KNOWN_TOPICS = frozenset(
    get_topic(cls)
    for cls in (
        PayoutAggregate.PayoutStarted,
        PayoutAggregate.TransferFailed,
        PayoutAggregate.TransferSucceeded,
        PayoutAggregate.Released,
        PayoutAggregate.TransferReversed,
        StripeEventRecord.StripeEventReceived,
        CapturedPayment.PaymentCaptured,
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
        CapturedPayment.PaymentCaptured.TOPIC,
        StoreModeRecord.ModeDeclared.TOPIC,
    }
)


def _totals(report: AuditReport, auditor: _Auditor) -> None:
    currencies: dict[str, CurrencyTotals] = {}
    providers: dict[tuple[str, str], ProviderTotals] = {}
    for p in auditor.payouts.values():
        c = currencies.get(p.currency)
        if c is None:
            c = currencies[p.currency] = CurrencyTotals(p.currency)
        key = (p.provider_id, p.currency)
        pt = providers.get(key)
        if pt is None:
            pt = providers[key] = ProviderTotals(p.provider_id, p.currency)
        c.payouts += 1
        pt.payouts += 1
        if p.released:
            c.released += 1
            c.released_amount += p.amount
            pt.released += 1
            pt.released_amount += p.amount
        c.reversed_amount += p.reversed
        pt.reversed_amount += p.reversed
        if p.open_since is not None:
            c.in_flight += 1
            c.in_flight_amount += p.amount
            pt.in_flight += 1
            report.in_flight.append(
                InFlightPayout(
                    event_service_id=p.event_service_id or "",
                    payout_id=str(p.payout_id),
                    attempt=p.attempt,
                    amount=p.amount,
                    currency=p.currency,
                    started_notification_id=p.open_since,
                )
            )
        elif p.failed:
            c.failed += 1
    for currency, (count, amount) in auditor.captured.items():
        c = currencies.get(currency)
        if c is None:
            c = currencies[currency] = CurrencyTotals(currency)
        c.captured += count
        c.captured_amount += amount
    report.currencies = sorted(currencies.values(), key=lambda t: t.currency)
    report.providers = sorted(providers.values(), key=lambda t: (t.provider_id, t.currency))
    report.in_flight.sort(key=lambda f: f.started_notification_id)

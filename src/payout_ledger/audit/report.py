"""What an audit reports: its findings, per-payout summaries and totals."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from itertools import islice
from operator import index as as_index
from typing import Any, overload
from uuid import UUID

from payout_ledger.domain.payout import PayoutStatus

__all__ = [
    "AuditReport",
    "CurrencyTotals",
    "InFlightPayout",
    "InFlightReversal",
    "InFlightRows",
    "PayoutSummary",
    "ProviderTotals",
    "ReversalSummary",
    "Violation",
    "ViolationKind",
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
    """More reversed than the transfer's amount, or a reversal claim for more than
    is not yet reversed."""
    REVERSAL_WITHOUT_TRANSFER = "reversal_without_transfer"
    """A reversal of a transfer the payout does not have, or of a payout that is
    not paid (a ``ReversalStarted`` before ``Released``)."""
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
    REVERSAL_WITHOUT_OUTCOME = "reversal_without_outcome"
    """A ``ReversalStarted`` while the payout's previous reversal attempt had no
    recorded outcome: only one reversal may be in flight per payout."""
    REVERSAL_OUT_OF_SEQUENCE = "reversal_out_of_sequence"
    """A reversal attempt whose number does not follow the payout's previous one
    (attempts are numbered 1, 2, 3... per payout)."""
    REVERSAL_KEY_MISMATCH = "reversal_key_mismatch"
    """A ``ReversalStarted`` whose idempotency key is not
    ``reverse_payment.attempt{N}:{event_service_id}`` of its attempt and payout."""
    REVERSAL_UNLIKE_PAYOUT = "reversal_unlike_payout"
    """A reversal claim of no positive amount, or in another currency than the payout's."""
    REVERSAL_AMOUNTS_INCONSISTENT = "reversal_amounts_inconsistent"
    """A reversal's bookkeeping does not add up: ``reversed_before`` is not what the
    log says was reversed at the claim, or a ``ReversalSucceeded``'s
    ``amount_reversed`` is below ``reversed_before + amount`` (or below what was
    already known reversed)."""
    REVERSAL_OUTCOME_WITHOUT_ATTEMPT = "reversal_outcome_without_attempt"
    """A ``ReversalSucceeded`` or ``ReversalFailed`` for a reversal attempt that is
    not in flight."""
    REVERSAL_UNLIKE_CLAIM = "reversal_unlike_claim"
    """A reversal outcome whose reference, idempotency key or amount is not its
    attempt's claim."""


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


@dataclass(frozen=True, slots=True)
class InFlightPayout:
    """A payout whose current attempt has no recorded outcome."""

    event_service_id: str
    payout_id: str
    attempt: int
    amount: int
    currency: str
    started_notification_id: int


class InFlightRows(Sequence[InFlightPayout]):
    """The payouts in flight of a report, in the order they started: a read-only sequence.

    A run from a checkpoint leaves the payouts no event touched as the checkpoint
    saved them; their rows are made when first asked for (by index, slice or
    iteration), so a report of many payouts in flight costs nothing to list until
    it is listed. Its length is known at once. Equal to any sequence of the same rows;
    safe to read from several threads; copied and pickled with all its rows made.
    """

    __slots__ = ("_count", "_failed", "_lock", "_more", "_rows")

    def __init__(self, count: int, rows: Iterator[InFlightPayout]) -> None:
        self._count = count
        self._rows: list[InFlightPayout] = []
        self._more: Iterator[InFlightPayout] | None = rows
        self._failed: Exception | None = None
        self._lock = threading.Lock()

    def _upto(self, n: int) -> list[InFlightPayout]:
        if self._more is not None and len(self._rows) < n:
            with self._lock:  # one reader makes rows at a time
                self._make(n)
        return self._rows

    def _make(self, n: int) -> None:
        rows, more = self._rows, self._more
        if more is not None and len(rows) < n:
            if self._failed is not None:
                raise self._failed
            try:
                rows.extend(islice(more, n - len(rows)))
            except Exception as exc:  # a row that cannot be made: the same error each time
                self._failed = exc
                raise
            if len(rows) >= self._count:
                self._more = None
            if len(rows) < n:
                raise ValueError(f"{self._count} rows in flight were announced, {len(rows)} read")

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, i: int) -> InFlightPayout: ...
    @overload
    def __getitem__(self, i: slice) -> list[InFlightPayout]: ...
    def __getitem__(self, i: int | slice) -> InFlightPayout | list[InFlightPayout]:
        if isinstance(i, slice):
            start, stop, step = i.indices(self._count)
            if step < 0:  # from the end: all of them, sliced as given
                return self._upto(self._count)[i]
            return self._upto(stop)[start:stop:step]
        n = as_index(i)
        if not -self._count <= n < self._count:
            raise IndexError("InFlightRows index out of range")
        return self._upto(self._count if n < 0 else n + 1)[n]

    def __iter__(self) -> Iterator[InFlightPayout]:
        for start in range(0, self._count, 4096):
            yield from self._upto(min(start + 4096, self._count))[start : start + 4096]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        """Copied and pickled as its rows, all made then (a generator can be neither)."""
        rows = self._upto(self._count)
        return (InFlightRows, (len(rows), iter(rows)))

    def __repr__(self) -> str:
        try:
            return f"InFlightRows({self._upto(self._count)!r})"
        except Exception as exc:
            return f"InFlightRows({self._count} rows, not all readable: {exc})"


@dataclass(frozen=True, slots=True)
class InFlightReversal:
    """A payout whose latest reversal attempt has no recorded outcome."""

    event_service_id: str
    payout_id: str
    reversal_attempt: int
    reference: str
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


class ReversalSummary:
    """A payout's latest platform reversal attempt, as the audit keeps it.

    Only payouts the platform reversed have one; the claim's terms are kept
    while the attempt is in flight, to check its outcome against them.
    """

    __slots__ = ("amount", "attempt", "key", "reference", "reversed_before", "since", "status")

    def __init__(self) -> None:
        self.attempt = 0
        self.status: str | None = None
        """A [`ReversalStatus`][payout_ledger.domain.payout.ReversalStatus] value."""
        self.since: int | None = None
        """Notification id of the attempt in flight, if any."""
        self.reference = ""
        self.key = ""
        self.amount = 0
        self.reversed_before = 0


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
        "reversal",
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
        """What the log says is reversed of the transfer: the largest cumulative amount
        reported by a webhook (``TransferReversed``) or implied by a platform reversal
        (``ReversalSucceeded``), so no reversal is counted twice."""
        self.reversal: ReversalSummary | None = None
        """The latest platform reversal attempt (None: the platform never reversed)."""
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
            "reversal_attempts": self.reversal.attempt if self.reversal else 0,
            "reversal_status": self.reversal.status if self.reversal else None,
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
    in_flight: Sequence[InFlightPayout] = field(default_factory=list)
    """The payouts whose current attempt has no recorded outcome, by the notification id
    that started it (a list, or [`InFlightRows`][payout_ledger.audit.InFlightRows]
    after a run from a checkpoint)."""
    violations: list[Violation] = field(default_factory=list)
    reversals_in_flight: list[InFlightReversal] = field(default_factory=list)
    """Payouts whose latest reversal attempt has no recorded outcome (settle them
    with ``payout-ledger resume``); not violations."""
    checkpoint: str = ""
    """What the run did with its checkpoint ("" if it was given none)."""
    incremental: bool = False
    """Whether the run continued from its checkpoint (read only the newer events)."""

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
            "in_flight": list(map(_flat, self.in_flight)),
            "reversals_in_flight": list(map(_flat, self.reversals_in_flight)),
            "violations": [asdict(v) for v in self.violations],
            "checkpoint": self.checkpoint,
            "incremental": self.incremental,
        }


def _flat(row: InFlightPayout | InFlightReversal) -> dict[str, Any]:
    """``asdict`` of a row whose fields are all scalars, without its deep copies."""
    return {name: getattr(row, name) for name in row.__slots__}

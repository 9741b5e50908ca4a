"""Verify the log: every hash chain, every seal, and the anchors an operator kept.

[`verify_ledger`][payout_ledger.audit.verify_ledger] recomputes everything from
the stored events, in one pass in notification order:

* each aggregate's versions follow 1, 2, 3... in notification order;
* each event's ``previous_hash`` is the digest of the aggregate's previous
  event (``GENESIS`` for version 1);
* each seal's event count and rolling digest equal the recomputed ones at its
  ``through_notification_id``;
* each anchored seal digest (``--anchor``) belongs to a seal in the log.

Events stored before chaining existed (``previous_hash`` missing) are a legacy
prefix: allowed only before an aggregate's first chained event, counted, and
protected by seals alone (``strict=True`` refuses them).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from uuid import UUID

from payout_ledger.audit.seal import SealInfo, notification_digest
from payout_ledger.audit.stream import DEFAULT_PAGE_SIZE, PageCallback, iter_notifications
from payout_ledger.chain import GENESIS, LedgerSeal, roll

if TYPE_CHECKING:
    from payout_ledger.ledger import PayoutLedger

__all__ = ["ChainProblem", "ProblemKind", "VerifyReport", "verify_ledger"]


class ProblemKind(StrEnum):
    """What verification can find."""

    UNDECODABLE = "undecodable"
    """A stored event cannot be read: damaged bytes, or the wrong cipher key."""
    VERSION_OUT_OF_SEQUENCE = "version_out_of_sequence"
    """An aggregate's versions skip or go back: an event was removed, inserted or reordered."""
    BROKEN_LINK = "broken_link"
    """``previous_hash`` is not the digest of the aggregate's previous event: that
    event was edited or replaced, or this one was inserted."""
    UNCHAINED_AFTER_CHAINED = "unchained_after_chained"
    """An event without ``previous_hash`` after chained events of the same aggregate."""
    LEGACY_UNCHAINED = "legacy_unchained"
    """An event stored before chaining (reported only with ``strict``)."""
    SEAL_MISMATCH = "seal_mismatch"
    """The log up to a seal differs from what the seal recorded: an event in its
    range was edited, removed, inserted or reordered."""
    SEAL_INVALID = "seal_invalid"
    """A seal that cannot be right (it covers itself, or less than the seal before it)."""
    ANCHOR_NOT_FOUND = "anchor_not_found"
    """No seal in the log has a digest the operator anchored outside the database."""


@dataclass(frozen=True)
class ChainProblem:
    """One finding, naming the stored event where it was noticed."""

    kind: ProblemKind
    notification_id: int | None
    originator_id: str | None
    originator_version: int | None
    topic: str | None
    detail: str


@dataclass
class VerifyReport:
    """What verification checked and found."""

    events: int = 0
    aggregates: int = 0
    chained_events: int = 0
    legacy_events: int = 0
    """Events stored before chaining existed (covered by seals only)."""
    last_notification_id: int = 0
    log_digest: str = GENESIS
    """The rolling digest over the whole log as it is now."""
    seals: int = 0
    latest_seal: SealInfo | None = None
    unsealed_events: int = 0
    """Events after the latest seal: protected by their chains only."""
    anchors_found: list[str] = field(default_factory=list)
    problems: list[ChainProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "aggregates": self.aggregates,
            "chained_events": self.chained_events,
            "legacy_events": self.legacy_events,
            "last_notification_id": self.last_notification_id,
            "log_digest": self.log_digest,
            "seals": self.seals,
            "latest_seal": self.latest_seal.as_dict() if self.latest_seal else None,
            "unsealed_events": self.unsealed_events,
            "anchors_found": self.anchors_found,
            "problems": [asdict(p) for p in self.problems],
        }


@dataclass(frozen=True)
class _Seal:
    notification_id: int
    info: SealInfo


class _Head:
    """An aggregate's newest event seen so far."""

    __slots__ = ("chained", "digest", "notification_id", "version")

    def __init__(self, version: int, digest: str, chained: bool, notification_id: int) -> None:
        self.version = version
        self.digest = digest
        self.chained = chained
        self.notification_id = notification_id


def verify_ledger(
    ledger: PayoutLedger,
    *,
    anchors: Iterable[str] = (),
    strict: bool = False,
    page_size: int = DEFAULT_PAGE_SIZE,
    on_page: PageCallback | None = None,
) -> VerifyReport:
    """Recompute every chain and seal; see the module docs for what is checked."""
    report = VerifyReport()
    problems = report.problems
    seals = _read_seals(ledger, report, page_size)
    pending = deque(seals)
    heads: dict[UUID, _Head] = {}
    mapper = ledger.mapper
    rolling, count = GENESIS, 0
    previous_through = 0

    def check_seal(seal: _Seal) -> None:
        nonlocal previous_through
        info = seal.info
        if info.event_count != count or info.log_digest != rolling:
            problems.append(
                ChainProblem(
                    kind=ProblemKind.SEAL_MISMATCH,
                    notification_id=seal.notification_id,
                    originator_id=None,
                    originator_version=info.seal_number,
                    topic=LedgerSeal.Sealed.TOPIC,
                    detail=(
                        f"seal {info.seal_number} recorded {info.event_count} events "
                        f"through notification {info.through_notification_id}, the log has "
                        f"{count}, and a different digest: an event after notification "
                        f"{previous_through} and up to {info.through_notification_id} was "
                        "edited, removed, inserted or reordered"
                        if info.event_count != count
                        else f"seal {info.seal_number}: the log's digest through notification "
                        f"{info.through_notification_id} differs: an event after "
                        f"notification {previous_through} was edited, removed, inserted "
                        "or reordered"
                    ),
                )
            )
        previous_through = info.through_notification_id

    sealed_through = seals[-1].info.through_notification_id if seals else None
    for n in iter_notifications(ledger, page_size=page_size, on_page=on_page):
        while pending and pending[0].info.through_notification_id < n.id:
            check_seal(pending.popleft())
        digest, event, error = notification_digest(mapper, n)
        rolling = roll(rolling, n.id, digest)
        count += 1
        report.last_notification_id = n.id
        if sealed_through is None or n.id > sealed_through:
            report.unsealed_events += 1
        if event is None:
            problems.append(_problem(ProblemKind.UNDECODABLE, n, str(error)))
            continue
        _check_link(n, event, digest, heads, report, strict)
    while pending:
        check_seal(pending.popleft())

    report.events = count
    report.aggregates = len(heads)
    report.log_digest = rolling
    report.latest_seal = seals[-1].info if seals else None
    _check_anchors(anchors, seals, report)
    return report


def _check_link(
    n: Any,
    event: Any,
    digest: str,
    heads: dict[UUID, _Head],
    report: VerifyReport,
    strict: bool,
) -> None:
    originator_id = event.originator_id
    head = heads.get(originator_id)
    version = event.originator_version
    expected_version = 1 if head is None else head.version + 1
    previous_hash = event.previous_hash
    if version != expected_version:
        seen = (
            "none"
            if head is None
            else f"version {head.version} (notification {head.notification_id})"
        )
        report.problems.append(
            _problem(
                ProblemKind.VERSION_OUT_OF_SEQUENCE,
                n,
                f"version {version} follows {seen}: an event of this aggregate was "
                "removed, inserted or reordered",
            )
        )
    elif previous_hash is None:
        report.legacy_events += 1
        if head is not None and head.chained:
            report.problems.append(
                _problem(
                    ProblemKind.UNCHAINED_AFTER_CHAINED,
                    n,
                    "no previous_hash, after chained events of the same aggregate",
                )
            )
        elif strict:
            report.problems.append(
                _problem(ProblemKind.LEGACY_UNCHAINED, n, "stored before chaining (strict)")
            )
    else:
        report.chained_events += 1
        expected = GENESIS if head is None else head.digest
        if previous_hash != expected:
            what = (
                "the first event's previous_hash is not GENESIS"
                if head is None
                else f"previous_hash does not match version {head.version} "
                f"(notification {head.notification_id}): that event was edited or "
                "replaced, or this one was forged"
            )
            report.problems.append(_problem(ProblemKind.BROKEN_LINK, n, what))
    if head is None:
        heads[originator_id] = _Head(version, digest, previous_hash is not None, n.id)
    else:
        head.version = version
        head.digest = digest
        head.chained = head.chained or previous_hash is not None
        head.notification_id = n.id


def _read_seals(ledger: PayoutLedger, report: VerifyReport, page_size: int) -> list[_Seal]:
    seals: list[_Seal] = []
    previous = 0
    for n in iter_notifications(ledger, topics=[LedgerSeal.Sealed.TOPIC], page_size=page_size):
        _, event, _ = notification_digest(ledger.mapper, n)
        if event is None:
            continue  # reported as undecodable by the main pass
        info = SealInfo.of(event)
        if info.through_notification_id >= n.id or info.through_notification_id < previous:
            report.problems.append(
                _problem(
                    ProblemKind.SEAL_INVALID,
                    n,
                    f"seal {info.seal_number} covers through notification "
                    f"{info.through_notification_id}; it is notification {n.id} and the "
                    f"seal before it covered through {previous}",
                )
            )
            continue
        previous = info.through_notification_id
        seals.append(_Seal(n.id, info))
    report.seals = len(seals)
    return seals


def _check_anchors(anchors: Iterable[str], seals: list[_Seal], report: VerifyReport) -> None:
    known = {s.info.seal_digest for s in seals}
    for anchor in anchors:
        anchor = anchor.strip().lower()
        if anchor in known:
            report.anchors_found.append(anchor)
        else:
            report.problems.append(
                ChainProblem(
                    kind=ProblemKind.ANCHOR_NOT_FOUND,
                    notification_id=None,
                    originator_id=None,
                    originator_version=None,
                    topic=LedgerSeal.Sealed.TOPIC,
                    detail=f"no seal in the log has digest {anchor}: seals were removed "
                    "or rewritten",
                )
            )


def _problem(kind: ProblemKind, n: Any, detail: str) -> ChainProblem:
    return ChainProblem(
        kind=kind,
        notification_id=n.id,
        originator_id=str(n.originator_id),
        originator_version=n.originator_version,
        topic=n.topic,
        detail=detail,
    )

"""Verify the log: every hash chain, every seal, and the anchors an operator kept.

[`verify_ledger`][payout_ledger.audit.verify_ledger] recomputes everything from
the stored events, in one pass in notification order:

* each stored event can be read, and its fields have the types its class
  declares (``undecodable``, ``ill_typed``);
* each aggregate's versions follow 1, 2, 3... in notification order;
* each event's ``previous_hash`` is the digest of the aggregate's previous
  event as stored (``GENESIS`` for version 1);
* each seal's event count and rolling digest equal the recomputed ones at its
  ``through_notification_id``;
* each anchored seal digest (``--anchor``) belongs to a seal in the log.

| finding | kind |
|---|---|
| a stored event cannot be read | ``undecodable`` |
| a field does not have its declared type (or a respelt id) | ``ill_typed`` |
| versions skip or go back | ``version_out_of_sequence`` |
| ``previous_hash`` is not the previous event's digest | ``broken_link`` |
| no ``previous_hash`` after chained events | ``unchained_after_chained`` |
| the log differs from what a seal recorded | ``seal_mismatch`` |
| a seal that cannot be right | ``seal_invalid`` |
| an anchored digest is no seal's | ``anchor_not_found`` |
| a row without a notification id (PostgreSQL) | ``hidden_row`` |
| (``strict`` only) an event stored before chaining | ``legacy_unchained`` |
| (``strict`` only) a link with the previous release's v1 digest | ``v1_link`` |

Events stored before chaining existed (``previous_hash`` missing) are a legacy
prefix: allowed only before an aggregate's first chained event, counted, and
protected by seals alone. Links written by the previous release name the v1
digest of the event before ([`legacy_digest`][payout_ledger.chain.legacy_digest],
computed here from that event's stored state): accepted and counted until the
aggregate's first v2 link; after it, a v1 link is a ``broken_link``. Seals
of class version 1 are checked against a rolling digest of v1 digests,
computed only up to the last such seal.
``strict=True`` reports every legacy event and v1 link.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.sqlite import SQLiteApplicationRecorder

from payout_ledger.audit.seal import SealInfo, StoredRead, chained_mapper, read_notification
from payout_ledger.audit.stream import (
    DEFAULT_PAGE_SIZE,
    PageCallback,
    hidden_rows,
    iter_notifications,
)
from payout_ledger.audit.typecheck import type_check
from payout_ledger.chain import GENESIS, ChainedMapper, LedgerSeal, as_stored, legacy_digest, roll

if TYPE_CHECKING:
    from payout_ledger.ledger import PayoutLedger

__all__ = ["ChainProblem", "ProblemKind", "VerifyReport", "verify_ledger"]


class ProblemKind(StrEnum):
    """What verification can find."""

    UNDECODABLE = "undecodable"
    """A stored event cannot be read: damaged bytes, the wrong cipher key, not a
    JSON object, or a topic that names no event of the ledger."""
    ILL_TYPED = "ill_typed"
    """A stored event whose fields do not have the types its class declares (an
    amount that is a string, an attempt that is a float, a missing field...), or,
    on SQLite, whose originator id is not spelt as the store writes it."""
    VERSION_OUT_OF_SEQUENCE = "version_out_of_sequence"
    """An aggregate's versions skip or go back: an event was removed, inserted or reordered."""
    BROKEN_LINK = "broken_link"
    """``previous_hash`` is not the digest of the aggregate's previous event: that
    event was edited or replaced, or this one was inserted."""
    UNCHAINED_AFTER_CHAINED = "unchained_after_chained"
    """An event without ``previous_hash`` after chained events of the same aggregate."""
    LEGACY_UNCHAINED = "legacy_unchained"
    """An event stored before chaining (reported only with ``strict``)."""
    V1_LINK = "v1_link"
    """A link made by the previous release, with the v1 digest (reported only with ``strict``)."""
    SEAL_MISMATCH = "seal_mismatch"
    """The log up to a seal differs from what the seal recorded: an event in its
    range was edited, removed, inserted or reordered."""
    SEAL_INVALID = "seal_invalid"
    """A seal that cannot be right (it covers itself, or less than the seal before
    it, or has an unknown class version)."""
    HIDDEN_ROW = "hidden_row"
    """A row without a notification id (PostgreSQL, after its NOT NULL was dropped):
    no reader in notification order, seals included, sees it, yet the ledger loads
    it with its aggregate."""
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
    v1_links: int = 0
    """Links written by the previous release (v1 digests), before any v2 link of theirs."""
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
            "v1_links": self.v1_links,
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
    class_version: int


class _Head:
    """An aggregate's newest event seen so far."""

    __slots__ = ("chained", "digest", "notification_id", "v1", "v2_linked", "version")

    def __init__(self, version: int, digest: str, chained: bool, notification_id: int) -> None:
        self.version = version
        self.digest = digest
        self.chained = chained
        self.notification_id = notification_id
        self.v1: str | None = None
        """The event's v1 digest, while the aggregate may still have v1 links."""
        self.v2_linked = False
        """Whether a link of this aggregate named a v2 digest."""


def _legacy(mapper: ChainedMapper, n: Any, read: StoredRead) -> str:
    """The v1 digest the previous release computed for this stored event."""
    if read.event is not None and read.plaintext is not None:
        try:
            state = mapper.transcoder.decode(read.plaintext)
            return legacy_digest(n.topic, n.originator_id, n.originator_version, state)
        except Exception:  # noqa: S110 - the previous release could not read it either
            pass
    return hashlib.sha256(b"undecodable:" + n.state).hexdigest()


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
    mapper = chained_mapper(ledger)
    seals = _read_seals(ledger, mapper, report, page_size)
    pending = deque(seals)
    heads: dict[UUID, _Head] = {}
    rolling, rolling_v1, count = GENESIS, GENESIS, 0
    v1_through = max(
        (s.info.through_notification_id for s in seals if s.class_version == 1), default=None
    )
    previous_through = 0

    def check_seal(seal: _Seal) -> None:
        nonlocal previous_through
        info = seal.info
        recomputed = rolling_v1 if seal.class_version == 1 else rolling
        if info.event_count != count or info.log_digest != recomputed:
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
        read = read_notification(mapper, n)
        rolling = roll(rolling, n.id, read.digest)
        count += 1
        v1: str | None = None
        if v1_through is not None and n.id <= v1_through:
            v1 = _legacy(mapper, n, read)
            rolling_v1 = roll(rolling_v1, n.id, v1)
        report.last_notification_id = n.id
        if sealed_through is None or n.id > sealed_through:
            report.unsealed_events += 1
        event = read.event
        if event is None:
            problems.append(_problem(ProblemKind.UNDECODABLE, n, str(read.error)))
            continue
        why = type_check(type(event))(vars(event))
        if why is not None:
            problems.append(_problem(ProblemKind.ILL_TYPED, n, f"{type(event).__name__}: {why}"))
        head = _check_link(n, event, read.digest, heads, report, strict)
        if not head.v2_linked:  # the aggregate's next link may still be a v1 link
            head.v1 = v1 if v1 is not None else _legacy(mapper, n, read)
    while pending:
        check_seal(pending.popleft())

    _check_sqlite_ids(ledger, report)
    for oid, version, topic in hidden_rows(ledger):
        problems.append(
            ChainProblem(
                kind=ProblemKind.HIDDEN_ROW,
                notification_id=None,
                originator_id=oid,
                originator_version=version if type(version) is int else None,
                topic=str(topic),
                detail="a stored row without a notification id: no reader in notification "
                "order sees it, no seal covers it, and the ledger applies it",
            )
        )
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
) -> _Head:
    """Check the event's version and link; returns its aggregate's head, now this event."""
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
        if head is None:
            if previous_hash != GENESIS:
                report.problems.append(
                    _problem(
                        ProblemKind.BROKEN_LINK, n, "the first event's previous_hash is not GENESIS"
                    )
                )
        elif previous_hash == head.digest:
            head.v2_linked = True
        elif head.v1 is not None and previous_hash == head.v1:
            report.v1_links += 1
            if strict:
                report.problems.append(
                    _problem(ProblemKind.V1_LINK, n, "a link of the previous release (strict)")
                )
        else:
            report.problems.append(
                _problem(
                    ProblemKind.BROKEN_LINK,
                    n,
                    f"previous_hash does not match version {head.version} "
                    f"(notification {head.notification_id}): that event was edited or "
                    "replaced, or this one was forged"
                    + (
                        " (a v1 link is accepted only before the aggregate's first v2 link)"
                        if head.v2_linked
                        else ""
                    ),
                )
            )
    if head is None:
        head = heads[originator_id] = _Head(version, digest, previous_hash is not None, n.id)
    else:
        head.version = version
        head.digest = digest
        head.chained = head.chained or previous_hash is not None
        head.notification_id = n.id
    head.v1 = None
    return head


def _check_sqlite_ids(ledger: PayoutLedger, report: VerifyReport) -> None:
    """On SQLite, originator ids are text: each must be spelt as the store writes it.

    ``5f0c...`` and ``5F0C...`` or ``5f0c-...`` name the same UUID, so digests
    and chains do not see the difference, but the ledger loads an aggregate's
    events by the exact text: a respelt id would hide the event from its
    aggregate. (PostgreSQL's uuid column has one spelling.)
    """
    recorder = ledger.recorder
    if not isinstance(recorder, SQLiteApplicationRecorder):
        return
    statement = (
        "SELECT rowid, originator_id, originator_version, topic "  # noqa: S608
        f"FROM {recorder.events_table_name} WHERE typeof(originator_id) != 'text' "
        "OR length(originator_id) != 32 OR originator_id GLOB '*[^0-9a-f]*' ORDER BY rowid"
    )
    with recorder.datastore.transaction(commit=False) as cursor:
        raw = cursor.sqlite_cursor
        raw.row_factory = None
        raw.execute(statement)
        rows = raw.fetchall()
    for rowid, originator_id, version, topic in rows:
        report.problems.append(
            ChainProblem(
                kind=ProblemKind.ILL_TYPED,
                notification_id=rowid,
                originator_id=str(originator_id),
                originator_version=version,
                topic=topic,
                detail=f"originator_id is stored as {originator_id!r}, not as the 32 "
                "lower-case hex digits the store writes: the ledger would not load this "
                "event with its aggregate",
            )
        )


def _read_seals(
    ledger: PayoutLedger, mapper: ChainedMapper, report: VerifyReport, page_size: int
) -> list[_Seal]:
    seals: list[_Seal] = []
    previous = 0
    check = type_check(LedgerSeal.Sealed)
    seen_v2 = False
    for n in iter_notifications(ledger, topics=[LedgerSeal.Sealed.TOPIC], page_size=page_size):
        event = read_notification(mapper, n).event
        if event is None or check(vars(event)) is not None:
            continue  # reported as undecodable or ill-typed by the main pass
        stored = as_stored(event)
        class_version = stored.class_version if stored is not None else 0
        if class_version not in (1, 2) or (class_version == 1 and seen_v2):
            report.problems.append(
                _problem(
                    ProblemKind.SEAL_INVALID,
                    n,
                    f"a seal of class version {class_version!r}"
                    + (" after a seal of class version 2" if class_version == 1 else ""),
                )
            )
            continue
        seen_v2 = seen_v2 or class_version == 2
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
        seals.append(_Seal(n.id, info, class_version))
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

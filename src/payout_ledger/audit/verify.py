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
digest of the event before ([`legacy_digest`][payout_ledger.domain.chain.legacy_digest],
computed here from that event's stored state): accepted and counted until the
aggregate's first v2 link; after it, a v1 link is a ``broken_link``. Seals
of class version 1 are checked against a rolling digest of v1 digests,
computed only up to the last such seal.
``strict=True`` reports every legacy event and v1 link.

Links are checked by ``payout_ledger.audit.verify_links``, seals read and anchors
matched by ``payout_ledger.audit.verify_seals``; the report's types are in
``payout_ledger.audit.verify_report``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING
from uuid import UUID

from eventsourcing.sqlite import SQLiteApplicationRecorder

from payout_ledger.adapters import telemetry
from payout_ledger.adapters.log import (
    DEFAULT_PAGE_SIZE,
    PageCallback,
    hidden_rows,
    iter_notifications,
)
from payout_ledger.adapters.mapper import chained_mapper, read_notification
from payout_ledger.audit.verify_links import Head, check_link, v1_digest
from payout_ledger.audit.verify_report import ChainProblem, ProblemKind, VerifyReport, problem_at
from payout_ledger.audit.verify_seals import Seal, check_anchors, read_seals
from payout_ledger.domain.chain import GENESIS, roll
from payout_ledger.domain.seal import LedgerSeal
from payout_ledger.domain.typecheck import type_check

if TYPE_CHECKING:
    from payout_ledger.service.ledger import PayoutLedger

__all__ = ["ChainProblem", "ProblemKind", "VerifyReport", "verify_ledger"]


@telemetry.traced(
    "payout_ledger.verify",
    lambda report: {"events": report.events, "problems": len(report.problems), "ok": report.ok},
)
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
    seals = read_seals(ledger, mapper, report, page_size)
    pending = deque(seals)
    heads: dict[UUID, Head] = {}
    rolling, rolling_v1, count = GENESIS, GENESIS, 0
    v1_through = max(
        (s.info.through_notification_id for s in seals if s.class_version == 1), default=None
    )
    previous_through = 0

    def check_seal(seal: Seal) -> None:
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
            v1 = v1_digest(mapper, n, read)
            rolling_v1 = roll(rolling_v1, n.id, v1)
        report.last_notification_id = n.id
        if sealed_through is None or n.id > sealed_through:
            report.unsealed_events += 1
        event = read.event
        if event is None:
            problems.append(problem_at(ProblemKind.UNDECODABLE, n, str(read.error)))
            continue
        why = type_check(type(event))(vars(event))
        if why is not None:
            problems.append(problem_at(ProblemKind.ILL_TYPED, n, f"{type(event).__name__}: {why}"))
        head = check_link(n, event, read.digest, heads, report, strict)
        if not head.v2_linked:  # the aggregate's next link may still be a v1 link
            head.v1 = v1 if v1 is not None else v1_digest(mapper, n, read)
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
    check_anchors(anchors, seals, report)
    return report


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

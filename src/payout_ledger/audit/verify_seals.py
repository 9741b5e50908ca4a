"""Seals and anchors: the seals read from the log, and the anchors an operator kept."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from payout_ledger.adapters.log import aggregate_rows, notification
from payout_ledger.adapters.mapper import ChainedMapper, read_notification
from payout_ledger.audit.verify_report import ChainProblem, ProblemKind, VerifyReport, problem_at
from payout_ledger.domain.chain import as_stored
from payout_ledger.domain.seal import LEDGER_SEAL_ID, LedgerSeal
from payout_ledger.domain.typecheck import type_check
from payout_ledger.service.sealing import SealInfo

if TYPE_CHECKING:
    from payout_ledger.service.ledger import PayoutLedger

__all__ = ["Seal", "check_anchors", "read_seals"]


@dataclass(frozen=True)
class Seal:
    """A seal read from the log that passed its own checks."""

    notification_id: int
    info: SealInfo
    class_version: int


def read_seals(
    ledger: PayoutLedger, mapper: ChainedMapper, report: VerifyReport, page_size: int
) -> list[Seal]:
    """The log's seals in order; the ones that cannot be right are reported and left out.

    Seals are the events of the seal aggregate, found by its id (an indexed
    read, whatever the log's size). A ``Sealed`` event stored under any other id
    is no seal: the main pass reports it.
    """
    seals: list[Seal] = []
    previous = 0
    check = type_check(LedgerSeal.Sealed)
    seen_v2 = False
    for row in aggregate_rows(ledger, LEDGER_SEAL_ID.hex):
        n = notification(*row)
        if n.topic != LedgerSeal.Sealed.TOPIC:
            continue  # the main pass reports an event the seal aggregate should not have
        event = read_notification(mapper, n).event
        if event is None or check(vars(event)) is not None:
            continue  # reported as undecodable or ill-typed by the main pass
        stored = as_stored(event)
        class_version = stored.class_version if stored is not None else 0
        if class_version not in (1, 2) or (class_version == 1 and seen_v2):
            report.problems.append(
                problem_at(
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
                problem_at(
                    ProblemKind.SEAL_INVALID,
                    n,
                    f"seal {info.seal_number} covers through notification "
                    f"{info.through_notification_id}; it is notification {n.id} and the "
                    f"seal before it covered through {previous}",
                )
            )
            continue
        previous = info.through_notification_id
        seals.append(Seal(n.id, info, class_version))
    report.seals = len(seals)
    return seals


def check_anchors(anchors: Iterable[str], seals: list[Seal], report: VerifyReport) -> None:
    """Note each anchored digest found among the seals; report the others."""
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

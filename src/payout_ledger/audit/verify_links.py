"""Hash-chain links: each event's version and ``previous_hash`` against its aggregate's head."""

from __future__ import annotations

import hashlib
from typing import Any, cast
from uuid import UUID

from payout_ledger.adapters.mapper import ChainedMapper, StoredRead
from payout_ledger.audit.verify_report import ProblemKind, VerifyReport, problem_at
from payout_ledger.domain.chain import GENESIS, legacy_digest

__all__ = ["Head", "check_link", "v1_digest"]


class Head:
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


def v1_digest(mapper: ChainedMapper, n: Any, read: StoredRead) -> str:
    """The v1 digest the previous release computed for this stored event."""
    if read.event is not None and read.plaintext is not None:
        try:
            state = mapper.transcoder.decode(read.plaintext)
            return legacy_digest(n.topic, n.originator_id, n.originator_version, state)
        except Exception:  # noqa: S110 - the previous release could not read it either
            pass
    return hashlib.sha256(b"undecodable:" + n.state).hexdigest()


def check_link(
    n: Any,
    event: Any,
    digest: str,
    heads: dict[str, Any],
    report: VerifyReport,
    strict: bool,
) -> Head:
    """Check the event's version and link; returns its aggregate's head, now this event.

    ``heads`` are keyed by the aggregate's id as 32 hex digits.
    """
    originator_id = cast(UUID, event.originator_id).hex
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
            problem_at(
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
                problem_at(
                    ProblemKind.UNCHAINED_AFTER_CHAINED,
                    n,
                    "no previous_hash, after chained events of the same aggregate",
                )
            )
        elif strict:
            report.problems.append(
                problem_at(ProblemKind.LEGACY_UNCHAINED, n, "stored before chaining (strict)")
            )
    else:
        report.chained_events += 1
        if head is None:
            if previous_hash != GENESIS:
                report.problems.append(
                    problem_at(
                        ProblemKind.BROKEN_LINK, n, "the first event's previous_hash is not GENESIS"
                    )
                )
        elif previous_hash == head.digest:
            head.v2_linked = True
        elif head.v1 is not None and previous_hash == head.v1:
            report.v1_links += 1
            if strict:
                report.problems.append(
                    problem_at(ProblemKind.V1_LINK, n, "a link of the previous release (strict)")
                )
        else:
            report.problems.append(
                problem_at(
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
        head = heads[originator_id] = Head(version, digest, previous_hash is not None, n.id)
    else:
        head.version = version
        head.digest = digest
        head.chained = head.chained or previous_hash is not None
        head.notification_id = n.id
    head.v1 = None
    return head

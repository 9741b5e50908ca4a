"""What verification reports: its findings and what it checked."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from payout_ledger.domain.chain import GENESIS
from payout_ledger.service.sealing import SealInfo

__all__ = ["ChainProblem", "ProblemKind", "VerifyReport", "problem_at"]


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
    checkpoint: str = ""
    """What the run did with its checkpoint ("" if it was given none)."""
    incremental: bool = False
    """Whether the run continued from its checkpoint (read only the events after it)."""
    processes: int = 1
    """How many processes read the log (2: split at a seal, see ``verify_split``)."""

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
            "checkpoint": self.checkpoint,
            "incremental": self.incremental,
            "processes": self.processes,
        }


def problem_at(kind: ProblemKind, n: Any, detail: str) -> ChainProblem:
    """A finding at the stored event ``n`` (a notification)."""
    return ChainProblem(
        kind=kind,
        notification_id=n.id,
        originator_id=str(n.originator_id),
        originator_version=n.originator_version,
        topic=n.topic,
        detail=detail,
    )

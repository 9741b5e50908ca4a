"""What one cycle of the maintenance worker did and found.

[`WorkerCycle`][payout_ledger.service.worker_cycle.WorkerCycle] is returned by
[`MaintenanceWorker.run_once`][payout_ledger.service.worker.MaintenanceWorker.run_once]
and handed to ``run``'s ``on_cycle``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from payout_ledger.service.reconcile import Mismatch
from payout_ledger.service.sealing import SealInfo

__all__ = ["WorkerCycle"]


@dataclass
class WorkerCycle:
    """What one cycle did and found. ``ok`` when it found nothing an operator must look at."""

    started_at: datetime
    leading: bool = False
    """Whether this worker led the store for the cycle (a follower does nothing)."""
    resumed: int = 0
    """In-flight payouts old enough that the cycle resumed them."""
    settled: int = 0
    """Of those, the ones now settled (released, failed or found settled)."""
    still_in_flight: list[str] = field(default_factory=list)
    """Event services resumed and still in flight (Stripe did not answer, cannot resume...)."""
    not_yet_due: int = 0
    """Payouts in flight whose claim is younger than ``worker_resume_after``: left alone."""
    outcomes: dict[str, int] = field(default_factory=dict)
    """Resumed payouts by outcome."""
    reversals_resumed: int = 0
    reversals_settled: int = 0
    reversals_still_in_flight: list[str] = field(default_factory=list)
    reversals_not_yet_due: int = 0
    reconciled: bool = False
    """Whether reconcile ran (off without Stripe or with a window of 0)."""
    payouts_checked: int = 0
    transfers_checked: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    """Reconcile's disagreements, less transfers of attempts still in flight (resume's work)."""
    awaiting_resume: int = 0
    """Transfers at Stripe of attempts still in flight: found, to be recorded by a resume."""
    events_projected: int = 0
    projection_skipped: int = 0
    """Events the read model cannot hold (each logged)."""
    seal: SealInfo | None = None
    """The seal this cycle made (None: nothing new to seal)."""
    anchored: list[int] = field(default_factory=list)
    """Numbers of the seals written to the anchor sink this cycle."""
    errors: dict[str, str] = field(default_factory=dict)
    """Step name -> what stopped it (one line, no secret)."""
    interrupted: str | None = None
    """Why the cycle ended early: ``stopped`` (asked to stop) or ``lost leadership``."""
    duration_seconds: float = 0.0

    @property
    def findings(self) -> list[str]:
        """What an operator must look at, one short line each."""
        found = [f"{step} failed: {error}" for step, error in self.errors.items()]
        if self.still_in_flight:
            found.append(f"{len(self.still_in_flight)} payouts still in flight after resume")
        if self.reversals_still_in_flight:
            found.append(
                f"{len(self.reversals_still_in_flight)} reversals still in flight after resume"
            )
        if self.mismatches:
            found.append(f"{len(self.mismatches)} reconcile mismatches")
        if self.projection_skipped:
            found.append(f"{self.projection_skipped} events the read model cannot hold")
        return found

    @property
    def ok(self) -> bool:
        """No finding (a follower's cycle, which does nothing, is ok)."""
        return not self.findings

    @property
    def result(self) -> str:
        """``follower``, ``interrupted``, ``findings`` or ``clean`` (the cycle metric's label)."""
        if not self.leading:
            return "follower"
        if self.findings:
            return "findings"
        return "interrupted" if self.interrupted else "clean"

    def summary(self) -> str:
        """One line for a log or a terminal."""
        if not self.leading:
            return "not leading: another worker leads this store"
        parts = [
            f"resumed {self.resumed} (settled {self.settled}, still in flight "
            f"{len(self.still_in_flight)}, not yet due {self.not_yet_due})",
            f"reversals {self.reversals_resumed} (settled {self.reversals_settled}, still in "
            f"flight {len(self.reversals_still_in_flight)})",
            f"reconcile {self.payouts_checked} payouts, {len(self.mismatches)} mismatches"
            if self.reconciled
            else "reconcile off",
            f"projected {self.events_projected} events",
            f"sealed #{self.seal.seal_number}" if self.seal else "nothing to seal",
            f"anchored {len(self.anchored)}",
        ]
        if self.errors:
            parts.append(f"errors in {', '.join(self.errors)}")
        if self.interrupted:
            parts.append(f"interrupted ({self.interrupted})")
        return f"{'; '.join(parts)} in {self.duration_seconds:.2f} s: {self.result}"

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return {
            "started_at": self.started_at.isoformat(),
            "leading": self.leading,
            "result": self.result,
            "resumed": self.resumed,
            "settled": self.settled,
            "still_in_flight": self.still_in_flight,
            "not_yet_due": self.not_yet_due,
            "outcomes": self.outcomes,
            "reversals_resumed": self.reversals_resumed,
            "reversals_settled": self.reversals_settled,
            "reversals_still_in_flight": self.reversals_still_in_flight,
            "reversals_not_yet_due": self.reversals_not_yet_due,
            "reconciled": self.reconciled,
            "payouts_checked": self.payouts_checked,
            "transfers_checked": self.transfers_checked,
            "mismatches": [
                {
                    "kind": m.kind.value,
                    "event_service_id": m.event_service_id,
                    "transfer_id": m.transfer_id,
                }
                for m in self.mismatches
            ],
            "awaiting_resume": self.awaiting_resume,
            "events_projected": self.events_projected,
            "projection_skipped": self.projection_skipped,
            "seal": None if self.seal is None else self.seal.as_dict(),
            "anchored": self.anchored,
            "errors": self.errors,
            "interrupted": self.interrupted,
            "findings": self.findings,
            "duration_seconds": round(self.duration_seconds, 3),
        }

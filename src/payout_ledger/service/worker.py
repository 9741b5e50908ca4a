"""The maintenance worker: what keeps the books settled, checked and sealed without a person.

Each cycle, while this process leads its store (see
[leader election][payout_ledger.adapters.leader]), the worker:

1. resumes payouts whose in-flight claim is older than ``worker_resume_after``
   (a younger one most likely belongs to a release still running), then the
   reversals in flight likewise: Stripe is asked first, never a second transfer;
2. reconciles the last ``worker_reconcile_window`` seconds with Stripe;
3. brings the payouts read model up to date;
4. seals the log if anything was recorded since the newest seal, and writes
   every seal the anchor sink does not hold yet to it
   (see [anchor sinks][payout_ledger.adapters.anchor]);
5. takes the ledger's status, which sets its gauges.

Each step runs on its own: one that fails is logged and reported in the
cycle's ``errors``, and the others still run. Before each step the worker
checks that it still leads, and stops when asked between two payouts. Every
step is safe to run from several processes at once (resume asks Stripe first,
seals conflict and retry, the read model tracks what it applied): leading only
spares the store and Stripe duplicate work.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from urllib.parse import urlsplit
from uuid import UUID

from payout_ledger.adapters import telemetry
from payout_ledger.adapters.anchor import AnchorError, AnchorSink, anchor_sink
from payout_ledger.adapters.leader import LeaderLock, leader_lock
from payout_ledger.adapters.log import claims_without_outcomes
from payout_ledger.adapters.projection.runner import open_payouts_view, run_projection
from payout_ledger.adapters.projection.view import PayoutsView
from payout_ledger.adapters.store import first_cause
from payout_ledger.domain.payout import (
    REVERSAL_CLAIMS,
    TRANSFER_CLAIMS,
    PayoutAggregate,
    PayoutStatus,
    ReversalStatus,
)
from payout_ledger.domain.seal import LedgerSeal
from payout_ledger.errors import ConfigurationError
from payout_ledger.service.anchoring import anchor_record, seals_to_anchor
from payout_ledger.service.ledger import PayoutLedger
from payout_ledger.service.reconcile import Mismatch, MismatchKind, reconcile
from payout_ledger.service.sealing import latest_seal
from payout_ledger.service.worker_cycle import WorkerCycle

__all__ = ["STEPS", "MaintenanceWorker", "WorkerCycle"]

logger = logging.getLogger("payout_ledger.worker")

STEPS = ("resume", "reversals", "reconcile", "project", "seal", "anchor", "status")
"""A cycle's steps, in order: the keys of ``WorkerCycle.errors``."""


class _Interrupted(Exception):  # noqa: N818 - a signal, not an error
    """The cycle must end now: asked to stop, or no longer leading."""


class MaintenanceWorker:
    """Runs the maintenance cycle on a ledger while it leads the ledger's store.

    ```python
    worker = MaintenanceWorker(ledger)
    stop = threading.Event()          # set it (from a signal handler) to stop
    worker.run(stop)                  # cycles every worker_interval while leading
    ```

    ``lock`` and ``sink`` default to the store's
    [leader lock][payout_ledger.adapters.leader.leader_lock] and the
    ``worker_anchor_sink`` setting; the other arguments override the
    ``worker_*`` settings. The ledger needs its Stripe gateway for resume and
    reconcile (without Stripe, transfers are simulated and reconcile is off).
    """

    def __init__(
        self,
        ledger: PayoutLedger,
        *,
        lock: LeaderLock | None = None,
        sink: AnchorSink | None = None,
        interval: float | None = None,
        resume_after: float | None = None,
        reconcile_window: float | None = None,
        lease_seconds: float | None = None,
    ) -> None:
        settings = ledger.settings
        self.ledger = ledger
        self.interval = settings.worker_interval if interval is None else interval
        self.resume_after = settings.worker_resume_after if resume_after is None else resume_after
        self.reconcile_window = (
            settings.worker_reconcile_window if reconcile_window is None else reconcile_window
        )
        self.lease_seconds = (
            settings.worker_lease_seconds if lease_seconds is None else lease_seconds
        )
        for name in ("interval", "lease_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"the worker's {name} must be more than 0 seconds")
        for name in ("resume_after", "reconcile_window"):
            if not getattr(self, name) >= 0:
                raise ConfigurationError(f"the worker's {name} must not be negative")
        self.lock = lock or leader_lock(
            settings,
            table=getattr(ledger.recorder, "events_table_name", "payoutledger_events"),
            lease_seconds=self.lease_seconds,
        )
        if sink is None and settings.worker_anchor_sink is not None:
            sink = anchor_sink(settings.worker_anchor_sink)
        self.sink = sink
        self._leading = False
        self._anchored: int | None = None  # the newest seal this process anchored
        self._view: PayoutsView | None = None
        self._cycles = 0
        self._seen_in_flight: dict[tuple[UUID, str, int], float] = {}
        self._reversals_in_flight: list[UUID] | None = None
        """Each claim in flight (payout, kind, attempt) and when this worker first saw
        it, on the ledger's monotonic clock."""

    # -- leadership ----------------------------------------------------------

    @property
    def leading(self) -> bool:
        """Whether this worker leads its store (as of its last check)."""
        return self._leading

    def try_lead(self) -> bool:
        """Lead if no one does; True while leading. Logs each change."""
        if self._leading:
            return self.check_leading()
        if self.lock.try_lead():
            self._became(True, "acquired the lock")
        return self._leading

    def check_leading(self) -> bool:
        """Whether this worker still holds the lock; steps down if it does not."""
        if self._leading and not self.lock.still_leading():
            self._became(False, "lost the lock")
        return self._leading

    def step_down(self) -> None:
        """Release the lock (another worker may lead at once)."""
        if self._leading:  # said before the lock goes: no log shows two leaders at once
            self._became(False, "released the lock")
        self.lock.release()

    def close(self) -> None:
        """Step down and free the lock's connection or file (the ledger stays open)."""
        self.step_down()
        self.lock.close()

    def __enter__(self) -> MaintenanceWorker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _became(self, leading: bool, why: str) -> None:
        self._leading = leading
        event = "lead_start" if leading else "lead_end"
        logger.info(
            "%s: %s (%s)",
            "lead start" if leading else "lead end",
            why,
            self.lock.description,
            extra=telemetry.extras(
                worker_event=event, pid=os.getpid(), host=socket.gethostname(), why=why
            ),
        )
        _record_leading(leading)

    # -- running ---------------------------------------------------------------

    def run(
        self,
        stop: threading.Event | None = None,
        *,
        on_cycle: Callable[[WorkerCycle], None] | None = None,
    ) -> None:
        """Cycle every ``interval`` seconds while leading, until ``stop`` is set.

        A follower tries to lead every third of ``lease_seconds``; a leader
        checks its lock as often while it waits for the next cycle, so a lost
        lock is given up within the lease. Returns, having released the lock,
        once ``stop`` is set (between two payouts at the latest).
        """
        stopping = stop or threading.Event()
        retry = self.lease_seconds / 3
        _record_leading(False)
        logger.info(
            "worker started: cycles every %g s while leading, tries to lead every %g s",
            self.interval,
            retry,
            extra=telemetry.extras(
                worker_event="start", pid=os.getpid(), host=socket.gethostname()
            ),
        )
        try:
            while not stopping.is_set():
                if not self.try_lead():
                    stopping.wait(retry)
                    continue
                cycle = self.run_once(stopping)
                if on_cycle is not None:
                    on_cycle(cycle)
                deadline = time.monotonic() + self.interval
                while not stopping.is_set() and self.check_leading():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    stopping.wait(min(retry, left))
        finally:
            self.close()

    def run_once(self, stop: threading.Event | None = None) -> WorkerCycle:
        """One cycle, if this worker leads (or can lead) its store; a follower's does nothing."""
        stopping = stop or threading.Event()
        started = time.monotonic()
        cycle = WorkerCycle(started_at=self.ledger._clock.now())
        cycle.leading = self.try_lead()
        if not cycle.leading:
            return cycle
        self._cycles += 1
        steps: list[tuple[str, Callable[[WorkerCycle, threading.Event], None]]] = [
            ("resume", self._resume),
            ("reversals", self._resume_reversals),
            ("reconcile", self._reconcile),
            ("project", self._project),
            ("seal", self._seal),
            ("anchor", self._anchor),
            ("status", self._status),
        ]
        for name, step in steps:
            try:
                self._checkpoint(stopping)
            except _Interrupted as exc:
                cycle.interrupted = str(exc)
                break
            try:
                step(cycle, stopping)
            except _Interrupted as exc:
                cycle.interrupted = str(exc)
                break
            except Exception as exc:
                cycle.errors[name] = self._one_line(exc)
                logger.exception(
                    "worker step %s failed",
                    name,
                    extra=telemetry.extras(worker_event="step_failed", step=name),
                )
        cycle.duration_seconds = time.monotonic() - started
        self._report(cycle)
        return cycle

    def _one_line(self, exc: Exception) -> str:
        """What stopped a step, in one line, never with the store's password."""
        text = f"{type(exc).__name__}: {first_cause(exc)}".replace("\n", " ")[:500]
        password = urlsplit(self.ledger.settings.store_url).password
        return text.replace(password, "***") if password else text

    def _checkpoint(self, stop: threading.Event) -> None:
        if stop.is_set():
            raise _Interrupted("stopped")
        if not self.check_leading():
            raise _Interrupted("lost leadership")

    def _report(self, cycle: WorkerCycle) -> None:
        for finding in cycle.findings:
            logger.warning(
                "worker finding: %s",
                finding,
                extra=telemetry.extras(worker_event="finding", finding=finding),
            )
        logger.info(
            "worker cycle %d: %s",
            self._cycles,
            cycle.summary(),
            extra=telemetry.extras(
                worker_event="cycle",
                cycle=self._cycles,
                result=cycle.result,
                resumed=cycle.resumed,
                settled=cycle.settled,
                still_in_flight=len(cycle.still_in_flight),
                not_yet_due=cycle.not_yet_due,
                reversals_resumed=cycle.reversals_resumed,
                mismatches=len(cycle.mismatches),
                events_projected=cycle.events_projected,
                seal_number=cycle.seal.seal_number if cycle.seal else None,
                anchored=len(cycle.anchored),
                errors=sorted(cycle.errors),
                duration_seconds=round(cycle.duration_seconds, 3),
            ),
        )
        _record_cycle(cycle.result)

    # -- the steps ---------------------------------------------------------------

    def _due(
        self, claim: tuple[UUID, str, int], started_at: datetime | None, now: datetime
    ) -> bool:
        """Whether a claim in flight is old enough to resume.

        Its age by the clocks is the claiming host's time against this one's, and
        hosts' clocks may disagree by hours: a claim is also due once this worker
        has seen it in flight for ``resume_after`` on its own monotonic clock, so
        a worker whose clock is behind never leaves it stuck longer than that.
        """
        seen = self._seen_in_flight.setdefault(claim, self.ledger._monotonic())
        return (
            started_at is None
            or now - started_at >= timedelta(seconds=self.resume_after)
            or self.ledger._monotonic() - seen >= self.resume_after
        )

    def _forget_seen(self, kind: str, in_flight: list[UUID]) -> None:
        """Keep only the claims of ``kind`` still in flight (the memory stays small)."""
        still = set(in_flight)
        for claim in [c for c in self._seen_in_flight if c[1] == kind and c[0] not in still]:
            del self._seen_in_flight[claim]

    def _resume(self, cycle: WorkerCycle, stop: threading.Event) -> None:
        ledger = self.ledger
        now = ledger._clock.now()
        outcomes: Counter[str] = Counter()
        # One read of the log's claims for both steps: the reversals step uses the
        # second list (a reversal claimed meanwhile is too fresh to be due anyway).
        in_flight, self._reversals_in_flight = claims_without_outcomes(
            ledger, [TRANSFER_CLAIMS, REVERSAL_CLAIMS]
        )
        self._forget_seen("transfer", in_flight)
        for payout_id in in_flight:
            if stop.is_set():
                raise _Interrupted("stopped")
            payout = self._payout(payout_id)
            if payout is not None:
                if payout.status is not PayoutStatus.IN_FLIGHT:
                    continue  # settled since the log was read
                claim = (payout_id, "transfer", payout.attempt)
                if not self._due(claim, payout.attempt_started_at, now):
                    cycle.not_yet_due += 1
                    continue
            result = ledger._resume_isolated(payout_id)
            cycle.resumed += 1
            outcomes[result.outcome.value] += 1
            _record_resumed("payout", result.outcome.value)
            if result.in_flight:
                cycle.still_in_flight.append(result.event_service_id)
            else:
                cycle.settled += 1
            logger.info(
                "resumed %s: %s",
                result.event_service_id,
                result.outcome.value,
                extra=telemetry.extras(
                    worker_event="resumed",
                    event_service_id=result.event_service_id,
                    payout_id=str(payout_id),
                    outcome=result.outcome.value,
                    detail=result.detail,
                ),
            )
        cycle.outcomes = dict(outcomes)

    def _resume_reversals(self, cycle: WorkerCycle, stop: threading.Event) -> None:
        ledger = self.ledger
        now = ledger._clock.now()
        in_flight, self._reversals_in_flight = self._reversals_in_flight, None
        if in_flight is None:  # the resume step failed before it read them
            in_flight = ledger._reversal_in_flight_ids()
        self._forget_seen("reversal", in_flight)
        for payout_id in in_flight:
            if stop.is_set():
                raise _Interrupted("stopped")
            payout = self._payout(payout_id)
            if payout is None:
                cycle.reversals_still_in_flight.append(f"(payout {payout_id})")
                continue
            if payout.reversal_status is not ReversalStatus.IN_FLIGHT:
                continue
            claim = (payout_id, "reversal", payout.reversal_attempt)
            if not self._due(claim, payout.reversal_started_at, now):
                cycle.reversals_not_yet_due += 1
                continue
            cycle.reversals_resumed += 1
            try:
                result = ledger.resume_reversal(payout.event_service_id)
            except ConfigurationError:
                raise
            except Exception as exc:
                logger.exception(
                    "reversal of %s could not be resumed",
                    payout.event_service_id,
                    extra=telemetry.extras(event_service_id=payout.event_service_id),
                )
                cycle.reversals_still_in_flight.append(payout.event_service_id)
                _record_resumed("reversal", f"cannot_resume_{type(exc).__name__}".lower())
                continue
            _record_resumed("reversal", result.outcome.value)
            if result.in_flight:
                cycle.reversals_still_in_flight.append(result.event_service_id)
            else:
                cycle.reversals_settled += 1

    def _payout(self, payout_id: UUID) -> PayoutAggregate | None:
        """The payout, or None if it cannot be read (resume then reports why)."""
        try:
            return self.ledger.get_payout_by_id(payout_id)
        except Exception:
            logger.exception("in-flight payout %s cannot be read", payout_id)
            return None

    def _reconcile(self, cycle: WorkerCycle, stop: threading.Event) -> None:
        ledger = self.ledger
        if self.reconcile_window == 0 or not ledger.settings.stripe_enabled:
            return
        if ledger.gateway is None:
            return
        since = ledger._clock.now() - timedelta(seconds=self.reconcile_window)
        report = reconcile(ledger, since=since)
        cycle.reconciled = True
        cycle.payouts_checked = report.payouts_checked
        cycle.transfers_checked = report.transfers_checked
        for mismatch in report.mismatches:
            if self._awaits_resume(mismatch):
                cycle.awaiting_resume += 1
            else:
                cycle.mismatches.append(mismatch)

    def _awaits_resume(self, mismatch: Mismatch) -> bool:
        """A transfer of the attempt still in flight: the lost answer a resume will record."""
        if mismatch.kind is not MismatchKind.MISSING_IN_LEDGER or not mismatch.event_service_id:
            return False
        if mismatch.ledger != PayoutStatus.IN_FLIGHT.value or not isinstance(mismatch.stripe, dict):
            return False
        payout = self.ledger.find_payout(mismatch.event_service_id)
        return (
            payout is not None
            and payout.status is PayoutStatus.IN_FLIGHT
            and mismatch.stripe.get("attempt") == str(payout.attempt)
        )

    def _project(self, cycle: WorkerCycle, stop: threading.Event) -> None:
        if self.ledger.settings.store_url.startswith("memory:"):
            return  # the read model lives in a database
        if self._view is None:
            self._view = open_payouts_view(self.ledger)
        run = run_projection(self.ledger, view=self._view, stop=stop)
        cycle.events_projected = run.events
        cycle.projection_skipped = run.skipped

    def _seal(self, cycle: WorkerCycle, stop: threading.Event) -> None:
        if self._unsealed_events():
            cycle.seal = self.ledger.seal()
            logger.info(
                "sealed #%d through notification %d: %s",
                cycle.seal.seal_number,
                cycle.seal.through_notification_id,
                cycle.seal.seal_digest,
                extra=telemetry.extras(
                    worker_event="sealed",
                    seal_number=cycle.seal.seal_number,
                    seal_digest=cycle.seal.seal_digest,
                ),
            )

    def _unsealed_events(self) -> bool:
        """Whether anything but the newest seal itself was recorded after the newest seal."""
        seal = latest_seal(self.ledger)
        start = 1 if seal is None else seal.through_notification_id + 1
        after = self.ledger.recorder.select_notifications(start, 2)
        return len(after) > 1 or any(n.topic != LedgerSeal.Sealed.TOPIC for n in after)

    def _anchor(self, cycle: WorkerCycle, stop: threading.Event) -> None:
        sink = self.sink
        if sink is None:
            return
        for seal in seals_to_anchor(self.ledger, sink, self._anchored):
            try:
                sink.write([anchor_record(seal)])
            except AnchorError:
                _record_anchor("failed")
                raise
            self._anchored = seal.seal_number
            cycle.anchored.append(seal.seal_number)
            _record_anchor("written")
            logger.info(
                "anchored seal #%d to %s",
                seal.seal_number,
                sink.description,
                extra=telemetry.extras(
                    worker_event="anchored",
                    seal_number=seal.seal_number,
                    seal_digest=seal.seal_digest,
                ),
            )

    def _status(self, cycle: WorkerCycle, stop: threading.Event) -> None:
        self.ledger.status()  # sets the gauges: in flight, oldest age, lag, seal age


# -- metrics (payout_ledger.worker.*) ----------------------------------------------


def _record_leading(leading: bool) -> None:
    telemetry.gauge(
        "payout_ledger.worker.leading",
        1 if leading else 0,
        unit="1",
        description="Whether this process's maintenance worker leads its store (1) or not (0).",
    )


def _record_cycle(result: str) -> None:
    telemetry.counter(
        "payout_ledger.worker.cycles",
        unit="{cycle}",
        description="Maintenance worker cycles, by result.",
        result=result,
    )


def _record_resumed(kind: str, outcome: str) -> None:
    telemetry.counter(
        "payout_ledger.worker.resumed",
        unit="{attempt}",
        description="Attempts in flight the maintenance worker resumed, by kind and outcome.",
        kind=kind,
        outcome=telemetry.label(outcome),
    )


def _record_anchor(result: str) -> None:
    telemetry.counter(
        "payout_ledger.worker.anchors",
        unit="{seal}",
        description="Seal digests written to the anchor sink (or failed), by result.",
        result=result,
    )

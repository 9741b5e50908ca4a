"""Status and health: what an operator's dashboard and load balancer ask the ledger.

[`ledger_status`][payout_ledger.service.health.ledger_status] measures the books
as they are: attempts in flight and the age of the oldest, the read model's lag,
the newest seal's age. Each call sets the gauges of
[telemetry][payout_ledger.adapters.telemetry] too.
[`ledger_health`][payout_ledger.service.health.ledger_health] names each
dependency and threshold and says whether it holds: the store answers, its
events can be read with these settings (the cipher), Stripe answers a read, the
oldest attempt in flight, the read model and the seals are within their
thresholds. Nothing in either report is an id or a secret: counts, ages, states
and the class of an error.

Ages are measured from the times recorded with each claim and seal (the claiming
host's wall clock) to this ledger's clock, so they are as right as the hosts'
clocks agree. They only raise alarms: nothing the ledger decides depends on them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID
from weakref import WeakKeyDictionary

from payout_ledger.adapters import telemetry
from payout_ledger.adapters.log import claims_without_outcomes, iter_notifications
from payout_ledger.adapters.projection.fold import PAYOUT_TOPICS
from payout_ledger.adapters.projection.runner import in_flight_rows, projection_position
from payout_ledger.domain.payout import REVERSAL_CLAIMS, TRANSFER_CLAIMS, PayoutAggregate
from payout_ledger.domain.seal import LedgerSeal
from payout_ledger.service.core import LedgerCore
from payout_ledger.service.sealing import latest_seal

__all__ = [
    "LAG_COUNT_LIMIT",
    "HealthCheck",
    "HealthReport",
    "LedgerStatus",
    "ledger_health",
    "ledger_status",
]

LAG_COUNT_LIMIT = 100_000
"""The read model's lag and the unsealed events are counted up to this many
events (and reported as this many beyond it), so a status stays bounded."""

_SEAL_TOPIC = LedgerSeal.Sealed.TOPIC


@dataclass(frozen=True)
class LedgerStatus:
    """The books at one moment: what is in flight, how far behind the read model and
    the seals are. No ids: counts and ages only."""

    checked_at: datetime
    """This ledger's clock when the status was taken."""
    last_notification_id: int
    """The newest event's notification id (0: the log is empty)."""
    in_flight: int
    """Payouts with an attempt that has no recorded outcome yet."""
    reversals_in_flight: int
    """Payouts with a reversal attempt that has no recorded outcome yet."""
    oldest_in_flight_seconds: float | None
    """The age of the oldest attempt in flight (transfer or reversal): from its
    claim's recorded time, or from when this process first saw it in flight,
    whichever is more; None when nothing is in flight."""
    projection_lag: int | None
    """Payout events not yet in the read model (counted up to
    [`LAG_COUNT_LIMIT`][payout_ledger.service.health.LAG_COUNT_LIMIT]); None when
    the read model was never created."""
    unsealed_events: int
    """Events after the newest seal, other than seals (all events when never
    sealed), counted up to [`LAG_COUNT_LIMIT`][payout_ledger.service.health.LAG_COUNT_LIMIT]."""
    oldest_unsealed_seconds: float | None
    """How long the first of those events has waited for a seal; None when none
    waits (or its time cannot be read)."""
    seconds_since_last_seal: float | None
    """The newest seal's age; None when the log was never sealed."""

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (``checked_at`` in ISO 8601)."""
        return {**asdict(self), "checked_at": self.checked_at.isoformat()}


CheckState = Literal["ok", "failing", "disabled"]


@dataclass(frozen=True)
class HealthCheck:
    """One dependency or threshold, its state, and what was seen (no ids, no secrets)."""

    name: str
    """``store``, ``cipher``, ``stripe``, ``in_flight``, ``projection`` or ``seal``."""
    state: CheckState
    """``ok``, ``failing``, or ``disabled`` (not checked: no Stripe, no threshold)."""
    detail: str
    """One line for a human: the value seen against the threshold, or the class of error."""
    value: float | None = None
    """The measured value (seconds, events, milliseconds), when there is one."""
    threshold: float | None = None
    """The value above which the check fails, when there is one."""

    @property
    def ok(self) -> bool:
        """Whether the check holds (a disabled check holds)."""
        return self.state != "failing"


@dataclass(frozen=True)
class HealthReport:
    """Every check; ``ok`` when none fails."""

    checks: list[HealthCheck] = field(default_factory=list)
    status: LedgerStatus | None = None
    """The status the threshold checks were measured on (None if the store failed)."""

    @property
    def ok(self) -> bool:
        """Whether every check holds."""
        return all(check.ok for check in self.checks)

    @property
    def failing(self) -> list[str]:
        """The names of the checks that fail."""
        return [check.name for check in self.checks if not check.ok]

    def as_dict(self) -> dict[str, Any]:
        """``{"ok", "checks": {name: {"state", "detail", "value", "threshold"}}, "status"}``."""
        return {
            "ok": self.ok,
            "checks": {
                c.name: {
                    "state": c.state,
                    "detail": c.detail,
                    "value": c.value,
                    "threshold": c.threshold,
                }
                for c in self.checks
            },
            "status": None if self.status is None else self.status.as_dict(),
        }


def ledger_status(ledger: LedgerCore) -> LedgerStatus:
    """Measure the books now (and set the telemetry gauges from it).

    Reads what the read model shows in flight and the claims and outcomes
    recorded after it (without a read model: the whole log's, as ``in_flight()``
    does), each in-flight payout, the newest seal and the events after it.
    """
    now = ledger._clock.now()
    last = ledger.recorder.max_notification_id() or 0
    payouts, reversals = _in_flight(ledger)
    oldest = _oldest_age(ledger, now, _claims(ledger, payouts, reversals))
    seal = latest_seal(ledger)
    unsealed, first_unsealed = _unsealed(
        ledger, 1 if seal is None else seal.through_notification_id + 1
    )
    status = LedgerStatus(
        checked_at=now,
        last_notification_id=last,
        in_flight=len(payouts),
        reversals_in_flight=len(reversals),
        oldest_in_flight_seconds=oldest,
        projection_lag=_projection_lag(ledger),
        unsealed_events=unsealed,
        oldest_unsealed_seconds=None
        if first_unsealed is None
        else (now - first_unsealed).total_seconds(),
        seconds_since_last_seal=None if seal is None else (now - seal.sealed_at).total_seconds(),
    )
    telemetry.record_status(status)
    return status


def _in_flight(ledger: LedgerCore) -> list[list[UUID]]:
    """Payouts with a transfer attempt in flight, and with a reversal attempt in flight.

    From the read model and the claims and outcomes recorded after it, when it
    exists (a read proportional to its lag); else from the whole log's claims.
    """
    kinds = [TRANSFER_CLAIMS, REVERSAL_CLAIMS]
    rows = in_flight_rows(ledger)
    if rows is None:
        return claims_without_outcomes(ledger, kinds)
    return claims_without_outcomes(
        ledger, kinds, after=rows.position, known=[rows.transfers, rows.reversals]
    )


Claim = tuple[UUID, str, datetime | None]
"""A claim in flight: its payout, ``transfer`` or ``reversal``, and its recorded time."""

_SEEN: WeakKeyDictionary[LedgerCore, dict[Claim, float]] = WeakKeyDictionary()
"""Per ledger, when a status first saw each claim in flight (its monotonic clock)."""


def _claims(ledger: LedgerCore, payouts: list[UUID], reversals: list[UUID]) -> list[Claim]:
    claims: list[Claim] = []
    for payout_id in payouts:
        claims.append((payout_id, "transfer", _read(ledger, payout_id, _attempt_started)))
    for payout_id in reversals:
        claims.append((payout_id, "reversal", _read(ledger, payout_id, _reversal_started)))
    return claims


def _attempt_started(payout: PayoutAggregate) -> datetime | None:
    return payout.attempt_started_at


def _reversal_started(payout: PayoutAggregate) -> datetime | None:
    return payout.reversal_started_at


def _oldest_age(ledger: LedgerCore, now: datetime, claims: list[Claim]) -> float | None:
    """The oldest claim's age: by its recorded time against this ledger's clock, or
    since this process first saw it in flight (its monotonic clock), whichever is
    more. A host whose clock is hours behind the claiming host's still sees a
    stuck payout age."""
    if not claims:
        _SEEN.pop(ledger, None)
        return None
    monotonic = ledger._monotonic()
    first_seen = _SEEN.get(ledger, {})
    seen = {claim: first_seen.get(claim, monotonic) for claim in claims}
    _SEEN[ledger] = seen
    return max(
        max(0.0 if started is None else (now - started).total_seconds(), monotonic - since)
        for (_, _, started), since in seen.items()
    )


def _read(
    ledger: LedgerCore,
    payout_id: UUID,
    when: Callable[[PayoutAggregate], datetime | None],
) -> datetime | None:
    try:
        return when(ledger.get_payout_by_id(payout_id))
    except Exception:  # an unreadable payout: audit and verify name it; it has no age here
        return None


def _projection_lag(ledger: LedgerCore) -> int | None:
    position = projection_position(ledger)
    if position is None:
        return None
    return _count(iter_notifications(ledger, start=position + 1, topics=PAYOUT_TOPICS))


def _unsealed(ledger: LedgerCore, start: int) -> tuple[int, datetime | None]:
    """How many events after ``start`` are not seals, and when the first was recorded."""
    waiting = (n for n in iter_notifications(ledger, start=start) if n.topic != _SEAL_TOPIC)
    first = next(waiting, None)
    if first is None:
        return 0, None
    try:
        recorded: datetime | None = getattr(ledger.mapper.to_domain_event(first), "timestamp")  # noqa: B009
    except Exception:  # unreadable: verify names it; it has no age here
        recorded = None
    return 1 + _count(waiting, LAG_COUNT_LIMIT - 1), recorded


def _count(items: Iterable[object], limit: int = LAG_COUNT_LIMIT) -> int:
    counted = 0
    for _ in items:
        if counted >= limit:
            break
        counted += 1
    return counted


def ledger_health(
    ledger: LedgerCore,
    *,
    check_stripe: bool = True,
) -> HealthReport:
    """Check each dependency and threshold of the ledger's settings.

    ``check_stripe=False`` leaves Stripe out (``disabled``): each check with it
    makes one read-only request to Stripe (a transfer list that matches
    nothing), which counts against the account's rate limit.
    """
    settings = ledger.settings
    checks: list[HealthCheck] = []
    started = time.monotonic()
    try:
        ledger.recorder.max_notification_id()
    except Exception as exc:
        checks.append(HealthCheck("store", "failing", f"unreachable ({type(exc).__name__})"))
        return HealthReport(checks)
    checks.append(
        HealthCheck("store", "ok", "answered", value=round((time.monotonic() - started) * 1000, 1))
    )
    checks.append(_cipher_check(ledger))
    checks.append(_stripe_check(ledger) if check_stripe else _disabled("stripe", "not asked"))
    try:
        status = ledger_status(ledger)
    except Exception as exc:
        checks.append(HealthCheck("in_flight", "failing", f"unreadable ({type(exc).__name__})"))
        return HealthReport(checks)
    checks.append(
        _within(
            "in_flight",
            status.oldest_in_flight_seconds,
            settings.health_in_flight_threshold,
            f"{status.in_flight} payout(s) and {status.reversals_in_flight} reversal(s) in flight",
            "nothing in flight",
            "s",
        )
    )
    checks.append(
        _within(
            "projection",
            None if status.projection_lag is None else float(status.projection_lag),
            settings.health_projection_lag_threshold,
            "read model lag",
            "no read model",
            " events",
        )
    )
    checks.append(
        _within(
            "seal",
            status.oldest_unsealed_seconds,
            settings.health_seal_age_threshold,
            f"{status.unsealed_events} event(s) waiting for a seal",
            "nothing waits for a seal",
            "s",
        )
    )
    return HealthReport(checks, status)


def _within(
    name: str,
    value: float | None,
    threshold: float | None,
    what: str,
    absent: str,
    unit: str,
) -> HealthCheck:
    if threshold is None:
        shown = absent if value is None else f"{what}: {value:.0f}{unit}"
        return HealthCheck(name, "disabled", f"{shown} (no threshold)", value=value)
    if value is None:
        return HealthCheck(name, "ok", absent, threshold=threshold)
    state: CheckState = "ok" if value <= threshold else "failing"
    return HealthCheck(
        name,
        state,
        f"{what}; {value:.0f}{unit} against {threshold:.0f}{unit}",
        value=value,
        threshold=threshold,
    )


def _disabled(name: str, why: str) -> HealthCheck:
    return HealthCheck(name, "disabled", why)


def _cipher_check(ledger: LedgerCore) -> HealthCheck:
    try:
        ledger._check_cipher()
    except Exception as exc:
        return HealthCheck(
            "cipher", "failing", f"stored events cannot be read ({type(exc).__name__})"
        )
    encrypted = ledger.settings.cipher_key is not None
    return HealthCheck("cipher", "ok", "encrypted, readable" if encrypted else "readable")


def _stripe_check(ledger: LedgerCore) -> HealthCheck:
    gateway = ledger._gateway
    if gateway is None or not ledger.settings.stripe_enabled:
        return _disabled("stripe", "Stripe disabled: transfers are simulated")
    started = time.monotonic()
    try:
        # One read-only request: a transfer group no payout has.
        next(iter(gateway.list_transfers(transfer_group="payout_ledger_health")), None)
    except Exception as exc:
        code = telemetry.label(getattr(exc, "code", None), missing=type(exc).__name__)
        return HealthCheck("stripe", "failing", f"unreachable ({code})")
    return HealthCheck(
        "stripe", "ok", "answered", value=round((time.monotonic() - started) * 1000, 1)
    )

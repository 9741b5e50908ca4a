"""The system under test, assembled as a host would, and the audits every test runs.

A host runs ``PayoutLedger`` on a store, with the production Stripe gateway
(here pointed at the fake Stripe server over HTTP) and a clock. The audits
below read only what a host or an auditor could read: the ledger's event log
and Stripe's transfers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from payout_ledger import (
    LedgerSettings,
    PayoutAggregate,
    PayoutLedger,
    PayoutStatus,
    ServiceProvider,
    idempotency_key,
)
from payout_ledger.domain.payout import reversal_idempotency_key
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing import InMemoryProviderDirectory
from payout_ledger.testing.fake_stripe import FakeClock, FakeStripe

PROVIDER_ID = "prov_rel"
AMOUNT = 5000
CURRENCY = "usd"
DAY_AND_A_BIT = 24 * 3600 + 60
"""Past the ledger's 23-hour key window and the fake's 24-hour key pruning."""


class SimulatedCrash(BaseException):
    """The process dies here. Not an ``Exception``: nothing in the ledger catches it."""


class LedgerClock:
    """The ledger's clock, read from the fake's: one jump moves both sides."""

    def __init__(self, fake_clock: FakeClock) -> None:
        self.fake_clock = fake_clock

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.fake_clock.now(), UTC)

    def monotonic(self) -> float:
        return self.fake_clock.now()

    def advance(self, seconds: float) -> None:
        self.fake_clock.advance(seconds)


class HostClock:
    """One host's clocks: a wall clock ``error`` seconds off true time, and a
    monotonic clock that measures true elapsed time (as a process's does).

    ``error`` may change between calls: a host whose clock is stepped by NTP.
    """

    def __init__(self, true_seconds: Callable[[], float], error: float = 0.0) -> None:
        self._true = true_seconds
        self.error = error

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._true() + self.error, UTC)

    def monotonic(self) -> float:
        return self._true()


def provider(account_id: str) -> ServiceProvider:
    return ServiceProvider(id=PROVIDER_ID, user_id="user_rel", stripe_account_id=account_id)


def release_request(event_service_id: str) -> dict[str, Any]:
    return {
        "event_service_id": event_service_id,
        "provider_id": PROVIDER_ID,
        "amount": {"amount": AMOUNT, "currency": CURRENCY},
    }


def stripe_gateway(
    fake: FakeStripe, *, timeout: float = 10.0, retries: int = 0
) -> StripeTransferGateway:
    """The production gateway pointed at the fake (without the SDK's own retries by default)."""
    return StripeTransferGateway(
        fake.api_key, api_base=fake.url, timeout=timeout, max_network_retries=retries
    )


def build_ledger(
    store_url: str,
    account_id: str,
    gateway: Any,
    *,
    clock: Any = None,
    ledger_class: type[PayoutLedger] = PayoutLedger,
    **settings: Any,
) -> PayoutLedger:
    settings.setdefault("postgres_pool_size", 2)
    settings.setdefault("postgres_max_overflow", 2)
    return ledger_class(
        settings=_settings(store_url, tuple(sorted(settings.items()))),
        providers=InMemoryProviderDirectory([provider(account_id)]),
        gateway=gateway,
        clock=clock,
    )


@functools.lru_cache(maxsize=64)
def _settings(store_url: str, overrides: tuple[tuple[str, Any], ...]) -> LedgerSettings:
    # Settings are frozen; building them reads the environment, which costs
    # more than a whole explored interleaving, so each one is built once.
    return LedgerSettings(store_url=store_url, **dict(overrides))


# -- audits ------------------------------------------------------------------------


class AuditError(AssertionError):
    """The ledger's log or its agreement with Stripe is wrong."""


@dataclass(frozen=True)
class Transfer:
    """A transfer at Stripe, as the audits need it."""

    id: str
    event_service_id: str | None
    attempt: str | None
    payout_id: str | None
    amount: int
    currency: str
    destination: str | None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Transfer:
        metadata = obj.get("metadata") or {}
        return cls(
            id=str(obj["id"]),
            event_service_id=metadata.get("event_service_id"),
            attempt=metadata.get("attempt"),
            payout_id=metadata.get("payout_id"),
            amount=int(obj["amount"]),
            currency=str(obj["currency"]),
            destination=obj.get("destination"),
        )


def fake_transfers(fake: FakeStripe) -> list[Transfer]:
    return [Transfer.from_json(t) for t in fake.transfers()]


def by_service(transfers: Iterable[Transfer]) -> dict[str, list[Transfer]]:
    grouped: dict[str, list[Transfer]] = {}
    for t in transfers:
        grouped.setdefault(t.event_service_id or "?", []).append(t)
    return grouped


def check_history(events: Sequence[PayoutAggregate.Event], event_service_id: str) -> str:
    """Check one payout's log is a whole, well-formed life; return its last state.

    Versions run 1..n without a gap; attempts follow
    ``PayoutStarted (TransferFailed PayoutStarted)* [TransferSucceeded Released]``
    with each attempt's own key; a ``TransferSucceeded`` is never the last
    event (the outcome is one save of two events: no half-saved outcome).
    Once paid, reversal attempts follow
    ``(ReversalStarted (ReversalSucceeded | ReversalFailed))* [ReversalStarted]``,
    numbered from 1 with each attempt's own key; a reference succeeds at most
    once, and what succeeded never adds up to more than the transfer.
    """
    if not events:
        return "absent"
    versions = [e.originator_version for e in events]
    if versions != list(range(1, len(events) + 1)):
        raise AuditError(f"{event_service_id}: versions {versions} have a gap")
    state, attempt = "new", 0
    reversal, reversal_attempt, reference = "none", 0, ""
    amount, reversed_total, succeeded = 0, 0, set()
    for i, e in enumerate(events):
        kind = type(e).__name__
        if isinstance(e, PayoutAggregate.PayoutStarted):
            ok = state in ("new", "failed") and e.attempt == attempt + 1
            attempt = e.attempt
            ok = ok and e.idempotency_key == idempotency_key(event_service_id, attempt)
            amount = e.amount
            state = "in_flight"
        elif isinstance(e, PayoutAggregate.TransferFailed):
            ok = state == "in_flight" and e.attempt == attempt
            state = "failed"
        elif isinstance(e, PayoutAggregate.TransferSucceeded):
            nxt = events[i + 1] if i + 1 < len(events) else None
            ok = (
                state == "in_flight"
                and e.attempt == attempt
                and isinstance(nxt, PayoutAggregate.Released)
                and nxt.transfer_id == e.transfer_id
            )
            state = "transferred"
        elif isinstance(e, PayoutAggregate.Released):
            ok = state == "transferred"
            state = "paid"
        elif isinstance(e, PayoutAggregate.TransferReversed):
            ok = state == "paid"
        elif isinstance(e, PayoutAggregate.ReversalStarted):
            ok = (
                state == "paid"
                and reversal != "in_flight"
                and e.reversal_attempt == reversal_attempt + 1
                and e.idempotency_key
                == reversal_idempotency_key(event_service_id, e.reversal_attempt)
                and e.reference not in succeeded
                and 0 < e.amount <= amount - reversed_total
            )
            reversal, reversal_attempt, reference = "in_flight", e.reversal_attempt, e.reference
        elif isinstance(e, PayoutAggregate.ReversalSucceeded | PayoutAggregate.ReversalFailed):
            ok = (
                reversal == "in_flight"
                and e.reversal_attempt == reversal_attempt
                and e.reference == reference
            )
            reversal = "settled"
            if isinstance(e, PayoutAggregate.ReversalSucceeded):
                succeeded.add(e.reference)
                reversed_total += e.amount
                ok = ok and reversed_total <= amount
        else:
            ok = False
        if not ok:
            kinds = [type(x).__name__ for x in events]
            raise AuditError(f"{event_service_id}: {kind} at v{i + 1} is out of place: {kinds}")
    return state


def replay(events: Sequence[PayoutAggregate.Event]) -> PayoutAggregate:
    aggregate: Any = None
    for e in events:
        aggregate = e.mutate(aggregate)
    assert aggregate is not None
    return aggregate  # type: ignore[no-any-return]


def state_of(payout: object) -> dict[str, object]:
    return {k: v for k, v in vars(payout).items() if k != "_pending_events"}


def check_replay_equals_live(live: PayoutLedger, fresh: PayoutLedger, service: str) -> None:
    """A fresh ledger replaying the stored log sees what the live ledger sees."""
    stored = fresh.history(service)
    current = live.find_payout(service)
    if not stored:
        if current is not None:
            raise AuditError(f"{service}: live state without stored events")
        return
    if current is None or state_of(replay(stored)) != state_of(current):
        raise AuditError(f"{service}: replayed state differs from the live state")


def check_agreement(
    ledger: PayoutLedger, transfers: Iterable[Transfer], services: Iterable[str]
) -> dict[str, str]:
    """The always-true agreement between the ledger and Stripe, per service.

    At most one transfer per service; every transfer belongs to the payout's
    current attempt (never to one recorded as failed); a paid payout records
    exactly Stripe's transfer; a failed or absent payout has none. Returns each
    service's state.
    """
    grouped = by_service(transfers)
    states: dict[str, str] = {}
    for service in services:
        events = ledger.history(service)
        state = check_history(events, service)
        states[service] = state
        at_stripe = grouped.get(service, [])
        if len(at_stripe) > 1:
            raise AuditError(f"{service}: {len(at_stripe)} transfers at Stripe: {at_stripe}")
        if state in ("absent", "failed"):
            if at_stripe:
                raise AuditError(f"{service}: {state} in the ledger, Stripe has {at_stripe}")
            continue
        payout = ledger.get_payout(service)
        for t in at_stripe:
            if t.attempt != str(payout.attempt) or t.payout_id != str(payout.id):
                raise AuditError(f"{service}: Stripe has {t}, the ledger is on {payout.attempt}")
            if (t.amount, t.currency, t.destination) != (
                payout.amount,
                payout.currency,
                payout.destination_account,
            ):
                raise AuditError(f"{service}: Stripe's {t} differs from the payout")
        if payout.is_paid:
            if [t.id for t in at_stripe] != [payout.transfer_id]:
                raise AuditError(
                    f"{service}: paid with {payout.transfer_id}, Stripe has {at_stripe}"
                )
        elif payout.status is not PayoutStatus.IN_FLIGHT:
            raise AuditError(f"{service}: unexpected status {payout.status}")
    stray = set(grouped) - set(services)
    if stray:
        raise AuditError(f"transfers for unknown services at Stripe: {sorted(stray)}")
    return states


# -- reversals -------------------------------------------------------------------------


@dataclass(frozen=True)
class Reversal:
    """A transfer reversal at Stripe, as the audits need it."""

    id: str
    transfer: str
    amount: int
    payout_id: str | None
    attempt: str | None
    reference: str | None

    @classmethod
    def from_metadata(
        cls, id: str, transfer: str, amount: int, metadata: Mapping[str, Any]
    ) -> Reversal:
        return cls(
            id=id,
            transfer=transfer,
            amount=amount,
            payout_id=metadata.get("payout_id"),
            attempt=metadata.get("reversal_attempt"),
            reference=metadata.get("reference"),
        )


def fake_reversals(fake: FakeStripe) -> tuple[dict[str, int], list[Reversal]]:
    """Each transfer's amount, and every reversal, at the fake Stripe."""
    amounts: dict[str, int] = {}
    reversals: list[Reversal] = []
    for t in fake.transfers():
        amounts[str(t["id"])] = int(t["amount"])
        listing = t["reversals"]
        if listing["has_more"]:
            raise AuditError(f"{t['id']}: more reversals than one page: {listing['total_count']}")
        for r in listing["data"]:
            reversals.append(
                Reversal.from_metadata(str(r["id"]), str(t["id"]), int(r["amount"]), r["metadata"])
            )
        if sum(r.amount for r in reversals if r.transfer == t["id"]) != t["amount_reversed"]:
            raise AuditError(f"{t['id']}: its reversals do not add up to amount_reversed")
    return amounts, reversals


@dataclass
class ReversalAudit:
    """What ``check_reversals`` saw: the counts the figures publish."""

    at_stripe: int = 0
    amount_at_stripe: int = 0
    recorded_succeeded: int = 0
    over_reversals: int = 0
    duplicate_reversals: int = 0
    reversed_transfers: dict[str, int] = field(default_factory=dict)
    """Stripe's reversed total per transfer."""


def check_reversals(
    ledger: PayoutLedger,
    transfer_amounts: Mapping[str, int],
    reversals: Iterable[Reversal],
    services: Iterable[str],
) -> ReversalAudit:
    """The always-true agreement between the ledger's reversals and Stripe's.

    At Stripe, per transfer: the reversals add up to no more than the transfer
    (no over-reversal); at most one reversal per (payout, reversal attempt) and
    one per host reference (no duplicate reversal); each one is a reversal
    attempt the ledger claimed, for the claimed amount, and not one it recorded
    as refused. In the ledger: every reversal recorded as succeeded exists at
    Stripe on the payout's transfer with the claimed amount, reference and
    attempt, and the ledger's ``amount_reversed`` never exceeds Stripe's.
    """
    audit = ReversalAudit()
    by_transfer: dict[str, list[Reversal]] = {}
    for r in reversals:
        by_transfer.setdefault(r.transfer, []).append(r)
    by_id: dict[str, Reversal] = {}
    for transfer, found in by_transfer.items():
        total = sum(r.amount for r in found)
        audit.at_stripe += len(found)
        audit.amount_at_stripe += total
        audit.reversed_transfers[transfer] = total
        if total > transfer_amounts[transfer]:
            audit.over_reversals += 1
            raise AuditError(f"over-reversal of {transfer}: {total} > {transfer_amounts[transfer]}")
        attempts = [(r.payout_id, r.attempt) for r in found]
        references = [(r.payout_id, r.reference) for r in found]
        if len(set(attempts)) != len(attempts) or len(set(references)) != len(references):
            audit.duplicate_reversals += 1
            raise AuditError(f"duplicate reversal of {transfer}: {found}")
        by_id.update((r.id, r) for r in found)
    for service in services:
        events = ledger.history(service)
        payout = ledger.find_payout(service)
        if payout is None or payout.transfer_id is None:
            continue
        at_stripe = by_transfer.get(payout.transfer_id, [])
        claimed: dict[int, PayoutAggregate.ReversalStarted] = {}
        refused: set[int] = set()
        for e in events:
            if isinstance(e, PayoutAggregate.ReversalStarted):
                claimed[e.reversal_attempt] = e
            elif isinstance(e, PayoutAggregate.ReversalFailed):
                refused.add(e.reversal_attempt)
            elif isinstance(e, PayoutAggregate.ReversalSucceeded):
                audit.recorded_succeeded += 1
                r = by_id.get(e.reversal_id)
                if r is None or (r.transfer, r.amount, r.reference, r.attempt) != (
                    payout.transfer_id,
                    e.amount,
                    e.reference,
                    str(e.reversal_attempt),
                ):
                    raise AuditError(
                        f"{service}: recorded reversal {e.reversal_id} of {e.amount} "
                        f"({e.reference}, attempt {e.reversal_attempt}); Stripe has {r}"
                    )
        for r in at_stripe:
            start = claimed.get(int(r.attempt or 0))
            if r.payout_id != str(payout.id) or start is None:
                raise AuditError(f"{service}: a reversal the ledger never claimed: {r}")
            if (r.amount, r.reference) != (start.amount, start.reference):
                raise AuditError(f"{service}: Stripe's {r} differs from the claim {start}")
            if int(r.attempt or 0) in refused:
                raise AuditError(f"{service}: {r} exists, the ledger recorded it refused")
        stripe_total = sum(r.amount for r in at_stripe)
        if payout.amount_reversed > stripe_total:
            raise AuditError(
                f"{service}: the ledger has {payout.amount_reversed} reversed, "
                f"Stripe {stripe_total}"
            )
    return audit

"""The audit's totals: per currency and per provider, from the payout summaries."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields, replace
from operator import attrgetter
from typing import TypeVar

from payout_ledger.audit.report import (
    AuditReport,
    CurrencyTotals,
    InFlightPayout,
    InFlightReversal,
    PayoutSummary,
    ProviderTotals,
    ReversalSummary,
)
from payout_ledger.domain.payout import PayoutAggregate, parse_reversal_idempotency_key

__all__ = [
    "Totals",
    "add_totals",
    "fold_payout",
    "in_flight_row",
    "merged",
    "new_totals",
    "reversal_row",
    "uuid_text",
]

_T = TypeVar("_T", CurrencyTotals, ProviderTotals)

_started = attrgetter("started_notification_id")


Totals = tuple[dict[str, CurrencyTotals], dict[tuple[str, str], ProviderTotals]]
"""Totals per currency, and per (provider, currency)."""


def new_totals() -> Totals:
    return {}, {}


def fold_payout(p: PayoutSummary, totals: Totals, sign: int = 1) -> None:
    """Add a settled payout's money to ``totals`` (``sign=-1``: take it back out).

    A payout with an attempt in flight is never folded: the report lists it.
    """
    currencies, providers = totals
    c = currencies.get(p.currency)
    if c is None:
        c = currencies[p.currency] = CurrencyTotals(p.currency)
    key = (p.provider_id, p.currency)
    pt = providers.get(key)
    if pt is None:
        pt = providers[key] = ProviderTotals(p.provider_id, p.currency)
    c.payouts += sign
    pt.payouts += sign
    if p.released:
        c.released += sign
        c.released_amount += sign * p.amount
        pt.released += sign
        pt.released_amount += sign * p.amount
    c.reversed_amount += sign * p.reversed
    pt.reversed_amount += sign * p.reversed
    if p.open_since is not None:
        c.in_flight += sign
        c.in_flight_amount += sign * p.amount
        pt.in_flight += sign
    elif p.failed:
        c.failed += sign


def add_totals(
    report: AuditReport,
    payouts: Iterable[PayoutSummary],
    captured: dict[str, list[int]],
    folded: Totals | None = None,
) -> None:
    """Fill the report's currencies, providers, in-flight payouts and reversals.

    ``payouts`` are the summaries still kept, ``folded`` the totals of those
    already let go (settled payouts, folded as the audit went). ``captured``
    maps a currency to its captured payments' ``[count, amount]``. A payout's
    reversed amount is its final ``reversed`` (the largest cumulative amount a
    webhook reported or a platform reversal implied), so a reversal reported
    both ways counts once. An in-flight reversal is named by its idempotency
    key's service when the key is the payout's, else left unnamed (``""``) for
    the caller to name.
    """
    totals = new_totals() if folded is None else _copy(folded)
    currencies, providers = totals
    in_flight, reversals = list(report.in_flight), report.reversals_in_flight
    for p in payouts:
        fold_payout(p, totals)
        if p.open_since is not None:
            in_flight.append(in_flight_row(p))
        r = p.reversal
        if r is not None and r.since is not None:
            reversals.append(reversal_row(p, r))
    for currency, (count, amount) in captured.items():
        c = currencies.get(currency)
        if c is None:
            c = currencies[currency] = CurrencyTotals(currency)
        c.captured += count
        c.captured_amount += amount
    report.currencies = sorted(
        (c for c in currencies.values() if c.payouts or c.captured), key=lambda t: t.currency
    )
    report.providers = sorted(
        (t for t in providers.values() if t.payouts), key=lambda t: (t.provider_id, t.currency)
    )
    report.in_flight = sorted(in_flight, key=_started)
    report.reversals_in_flight.sort(key=_started)


def in_flight_row(p: PayoutSummary) -> InFlightPayout:
    """The report's row of a payout whose attempt is in flight."""
    assert p.open_since is not None
    return InFlightPayout(
        event_service_id=p.event_service_id or "",
        payout_id=uuid_text(p.key),
        attempt=p.attempt,
        amount=p.amount,
        currency=p.currency,
        started_notification_id=p.open_since,
    )


def reversal_row(p: PayoutSummary, r: ReversalSummary) -> InFlightReversal:
    """The report's row of a payout whose reversal ``r`` is in flight."""
    assert r.since is not None
    return InFlightReversal(
        event_service_id=_service_of(p.key, r.key) or p.event_service_id or "",
        payout_id=uuid_text(p.key),
        reversal_attempt=r.attempt,
        reference=r.reference,
        amount=r.amount,
        currency=p.currency,
        started_notification_id=r.since,
    )


def merged(*parts: Totals) -> Totals:
    """The sum of ``parts`` (new objects: none of them changes)."""
    currencies: dict[str, CurrencyTotals] = {}
    providers: dict[tuple[str, str], ProviderTotals] = {}
    for part_currencies, part_providers in parts:
        for key, c in part_currencies.items():
            into = currencies.get(key)
            currencies[key] = replace(c) if into is None else _sum(into, c)
        for pkey, t in part_providers.items():
            pinto = providers.get(pkey)
            providers[pkey] = replace(t) if pinto is None else _sum(pinto, t)
    return currencies, providers


def _sum(into: _T, more: _T) -> _T:
    for f in fields(more):
        value = getattr(more, f.name)
        if type(value) is int:
            setattr(into, f.name, getattr(into, f.name) + value)
    return into


def _copy(totals: Totals) -> Totals:
    currencies, providers = totals
    return (
        {k: replace(v) for k, v in currencies.items()},
        {k: replace(v) for k, v in providers.items()},
    )


def _service_of(key: int, idempotency_key: str) -> str | None:
    """The event service a reversal key names, if it is this payout's."""
    parsed = parse_reversal_idempotency_key(idempotency_key)
    if parsed is None or PayoutAggregate.create_id(parsed[0]).int != key:
        return None
    return parsed[0]


def uuid_text(key: int) -> str:
    """``str(UUID(int=key))``, without the UUID."""
    h = f"{key:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

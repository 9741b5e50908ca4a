"""The audit's totals: per currency and per provider, from the payout summaries."""

from __future__ import annotations

from payout_ledger.audit.report import (
    AuditReport,
    CurrencyTotals,
    InFlightPayout,
    InFlightReversal,
    PayoutSummary,
    ProviderTotals,
)
from payout_ledger.domain.payout import PayoutAggregate, parse_reversal_idempotency_key

__all__ = ["add_totals"]


def add_totals(
    report: AuditReport, payouts: dict[int, PayoutSummary], captured: dict[str, list[int]]
) -> None:
    """Fill the report's currencies, providers, in-flight payouts and reversals.

    ``captured`` maps a currency to its captured payments' ``[count, amount]``.
    A payout's reversed amount is its final ``reversed`` (the largest cumulative
    amount a webhook reported or a platform reversal implied), so a reversal
    reported both ways counts once. An in-flight reversal is named by its
    idempotency key's service when the key is the payout's, else left unnamed
    (``""``) for the caller to name.
    """
    currencies: dict[str, CurrencyTotals] = {}
    providers: dict[tuple[str, str], ProviderTotals] = {}
    for p in payouts.values():
        c = currencies.get(p.currency)
        if c is None:
            c = currencies[p.currency] = CurrencyTotals(p.currency)
        key = (p.provider_id, p.currency)
        pt = providers.get(key)
        if pt is None:
            pt = providers[key] = ProviderTotals(p.provider_id, p.currency)
        c.payouts += 1
        pt.payouts += 1
        if p.released:
            c.released += 1
            c.released_amount += p.amount
            pt.released += 1
            pt.released_amount += p.amount
        c.reversed_amount += p.reversed
        pt.reversed_amount += p.reversed
        if p.open_since is not None:
            c.in_flight += 1
            c.in_flight_amount += p.amount
            pt.in_flight += 1
            report.in_flight.append(
                InFlightPayout(
                    event_service_id=p.event_service_id or "",
                    payout_id=str(p.payout_id),
                    attempt=p.attempt,
                    amount=p.amount,
                    currency=p.currency,
                    started_notification_id=p.open_since,
                )
            )
        elif p.failed:
            c.failed += 1
        r = p.reversal
        if r is not None and r.since is not None:
            report.reversals_in_flight.append(
                InFlightReversal(
                    event_service_id=_service_of(p.key, r.key) or p.event_service_id or "",
                    payout_id=str(p.payout_id),
                    reversal_attempt=r.attempt,
                    reference=r.reference,
                    amount=r.amount,
                    currency=p.currency,
                    started_notification_id=r.since,
                )
            )
    for currency, (count, amount) in captured.items():
        c = currencies.get(currency)
        if c is None:
            c = currencies[currency] = CurrencyTotals(currency)
        c.captured += count
        c.captured_amount += amount
    report.currencies = sorted(currencies.values(), key=lambda t: t.currency)
    report.providers = sorted(providers.values(), key=lambda t: (t.provider_id, t.currency))
    report.in_flight.sort(key=lambda f: f.started_notification_id)
    report.reversals_in_flight.sort(key=lambda f: f.started_notification_id)


def _service_of(key: int, idempotency_key: str) -> str | None:
    """The event service a reversal key names, if it is this payout's."""
    parsed = parse_reversal_idempotency_key(idempotency_key)
    if parsed is None or PayoutAggregate.create_id(parsed[0]).int != key:
        return None
    return parsed[0]

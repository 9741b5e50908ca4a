"""How a host backend wires the ledger: type-checked with mypy --strict in CI."""

from __future__ import annotations

from dataclasses import dataclass

from payout_ledger import (
    LedgerSettings,
    Money,
    PayoutLedger,
    ReleaseOutcome,
    ReleaseRequest,
    ServiceProvider,
)
from payout_ledger.testing import InMemoryTransferGateway


@dataclass
class ProviderRow:
    """A row of the host's own service_providers table."""

    id: str
    user_id: str
    stripe_account_id: str | None


class ProviderTable:
    """The host's ProviderDirectory: any object with get_provider() will do."""

    def __init__(self, rows: list[ProviderRow]) -> None:
        self._rows = {row.id: row for row in rows}

    def get_provider(self, provider_id: str) -> ServiceProvider | None:
        row = self._rows.get(provider_id)
        if row is None:
            return None
        return ServiceProvider(
            id=row.id, user_id=row.user_id, stripe_account_id=row.stripe_account_id
        )


def release_event_service(ledger: PayoutLedger, event_service_id: str) -> str:
    """What a host's "service delivered" handler does."""
    result = ledger.release_payment(
        ReleaseRequest(
            event_service_id=event_service_id,
            provider_id="prov_1",
            amount=Money(5000, "usd"),
        )
    )
    if result.onboarding_required:
        return "ask the provider to finish Stripe onboarding"
    if result.outcome is ReleaseOutcome.FAILED:
        return f"declined ({result.error_code}); try again later"
    if result.in_flight:
        return "Stripe did not answer; the payout will be settled"
    return f"paid by transfer {result.transfer_id}"


if __name__ == "__main__":
    table = ProviderTable([ProviderRow("prov_1", "user_1", "acct_1")])
    with PayoutLedger(
        settings=LedgerSettings(store_url="memory://"),
        providers=table,
        gateway=InMemoryTransferGateway(),
    ) as ledger:
        print(release_event_service(ledger, "es_1"))
        print(release_event_service(ledger, "es_1"))

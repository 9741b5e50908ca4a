"""Reconciliation finds each planted disagreement between the ledger and Stripe.

Everything goes through the real stripe SDK over HTTP to the fake Stripe
server. Mismatches are planted by ledgers whose gateway lies (it changes the
request or invents a transfer) on the same store as an honest ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from payout_ledger import (
    LedgerSettings,
    PayoutLedger,
    ServiceProvider,
    TransferRequest,
    TransferResult,
)
from payout_ledger.service.reconcile import MismatchKind, reconcile
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing import InMemoryProviderDirectory
from payout_ledger.testing.fake_stripe import FakeStripe, faults
from tests.support import release


class LyingGateway:
    """Sends a changed request to Stripe, or invents a transfer, and reports success."""

    def __init__(
        self,
        real: StripeTransferGateway,
        change: Callable[[TransferRequest], TransferRequest | None],
    ) -> None:
        self.real = real
        self.change = change

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        changed = self.change(request)
        if changed is None:
            return TransferResult(transfer_id="tr_ghost_never_made")
        return self.real.create_transfer(changed)

    def list_transfers(self, **filters: object) -> object:
        return self.real.list_transfers(**filters)  # type: ignore[arg-type]


@pytest.fixture
def world(fake: FakeStripe, durable_store_url: str) -> Iterator[dict[str, object]]:
    client = fake.client()
    account = client.v1.accounts.create({"type": "express"}).id
    other = client.v1.accounts.create({"type": "express"}).id
    providers = InMemoryProviderDirectory(
        [ServiceProvider(id="prov_alice", user_id="user_alice", stripe_account_id=account)]
    )
    real = StripeTransferGateway(fake.api_key, api_base=fake.url, max_network_retries=0)
    ledgers: list[PayoutLedger] = []

    def ledger(gateway: object = real) -> PayoutLedger:
        made = PayoutLedger(
            settings=LedgerSettings(store_url=durable_store_url),
            providers=providers,
            gateway=gateway,  # type: ignore[arg-type]
        )
        ledgers.append(made)
        return made

    yield {"ledger": ledger, "real": real, "other_account": other}
    for made in ledgers:
        made.close()


def _plant_everything(fake: FakeStripe, world: dict[str, object]) -> PayoutLedger:
    ledger_of: Callable[..., PayoutLedger] = world["ledger"]  # type: ignore[assignment]
    real: StripeTransferGateway = world["real"]  # type: ignore[assignment]
    honest = ledger_of()

    assert honest.release_payment(release("es_clean")).success

    fake.inject(faults.drop_after_commit())
    assert honest.release_payment(release("es_lost_response")).in_flight

    ledger_of(LyingGateway(real, lambda r: None)).release_payment(release("es_ghost"))
    ledger_of(
        LyingGateway(real, lambda r: r.model_copy(update={"amount": r.amount + 1}))
    ).release_payment(release("es_amount"))
    ledger_of(
        LyingGateway(real, lambda r: r.model_copy(update={"currency": "eur"}))
    ).release_payment(release("es_currency"))
    ledger_of(
        LyingGateway(
            real,
            lambda r: r.model_copy(update={"destination": world["other_account"]}),
        )
    ).release_payment(release("es_destination"))

    reversed_ = honest.release_payment(release("es_reversed"))
    fake.client().v1.transfers.reversals.create(reversed_.transfer_id, {"amount": 1000})

    paid = honest.release_payment(release("es_twice"))
    twin = fake.transfers()[-1]
    assert twin["id"] == paid.transfer_id
    fake.client().v1.transfers.create(
        {
            "amount": twin["amount"],
            "currency": twin["currency"],
            "destination": twin["destination"],
            "transfer_group": twin["transfer_group"],
            "metadata": dict(twin["metadata"]),
        }
    )
    return honest


EXPECTED = {
    ("es_lost_response", MismatchKind.MISSING_IN_LEDGER),
    ("es_ghost", MismatchKind.MISSING_AT_STRIPE),
    ("es_amount", MismatchKind.AMOUNT),
    ("es_currency", MismatchKind.CURRENCY),
    ("es_destination", MismatchKind.DESTINATION),
    ("es_reversed", MismatchKind.REVERSED),
    ("es_twice", MismatchKind.DUPLICATE_TRANSFER),
    ("es_twice", MismatchKind.MISSING_IN_LEDGER),
}
SERVICES = sorted({es for es, _ in EXPECTED} | {"es_clean"})


def test_reconcile_by_event_service_finds_every_planted_mismatch(
    fake: FakeStripe, world: dict[str, object]
) -> None:
    """Each planted disagreement is reported once, and the clean payout is not."""
    honest = _plant_everything(fake, world)

    report = reconcile(honest, event_service_ids=SERVICES)

    assert {(m.event_service_id, m.kind) for m in report.mismatches} == EXPECTED
    assert not report.ok
    assert report.payouts_checked == len(SERVICES)


def test_reconcile_by_time_window_finds_every_planted_mismatch(
    fake: FakeStripe, world: dict[str, object]
) -> None:
    """Listing Stripe by `created` and the ledger by event time finds the same set."""
    honest = _plant_everything(fake, world)
    now = datetime.now(UTC)

    report = reconcile(honest, since=now - timedelta(hours=1), until=now + timedelta(hours=1))

    assert {(m.event_service_id, m.kind) for m in report.mismatches} == EXPECTED


def test_reconcile_of_agreeing_books_is_clean(fake: FakeStripe, world: dict[str, object]) -> None:
    """Released payouts, a declined one and a settled one: no mismatch."""
    ledger: PayoutLedger = world["ledger"]()  # type: ignore[operator]
    ledger.release_payment(release("es_1"))
    fake.set_balance("usd", 0)
    assert ledger.release_payment(release("es_2")).error_code == "balance_insufficient"
    fake.set_balance("usd", 10**9)
    fake.inject(faults.drop_after_commit())
    ledger.release_payment(release("es_3"))
    ledger.resume_in_flight()

    report = reconcile(ledger, event_service_ids=["es_1", "es_2", "es_3"])

    assert report.ok, report.mismatches
    assert report.transfers_checked == 2

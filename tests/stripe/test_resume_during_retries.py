"""A resume during the claimant's own retries does not make a second transfer.

The trial's finding: ``stripe_idempotency_window`` accepted 60 s while one
gateway call could take ``stripe_timeout x (retries + 1)`` plus backoff. A
resume during the claimant's own retries started attempt 2, and both attempts
paid. Now a resume never starts a new attempt (it asks Stripe, then sends the
attempt's own key), and every HTTP try of the claimant first checks the
attempt's send window: a retry after the window has closed is not sent.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from payout_ledger import (
    PayoutLedger,
    ReleaseOutcome,
    TransferOutcomeUnknown,
    TransferRequest,
    TransferResult,
)
from payout_ledger.service.ports import StripeTransfer
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing.fake_stripe import FakeStripe, faults
from tests.stripe.stripe_support import LedgerMaker, release_request, transfer_posts, transfers_for

ES = "es_window"
WINDOW = 60


class FakeTime:
    """Both hosts' clocks: they move only when the fake's clock is moved."""

    def __init__(self, fake: FakeStripe) -> None:
        self.fake = fake

    def monotonic(self) -> float:
        return self.fake.clock.now()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.fake.clock.now(), UTC)


class ResumeBetweenTries:
    """The claimant's gateway: its first try is lost, a resume runs, then the retry.

    It stands for the SDK's retry loop with another host's ``resume`` running
    while the claimant sleeps between tries. Each try goes through the real
    Stripe gateway, which checks the send window before its POST.
    """

    def __init__(
        self, inner: StripeTransferGateway, fake: FakeStripe, resumer: list[PayoutLedger]
    ) -> None:
        self.inner = inner
        self.fake = fake
        self.resumer = resumer
        self.resumes: list[object] = []

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        self.fake.inject(faults.drop_before_commit(), method="POST", path="/v1/transfers")
        with contextlib.suppress(TransferOutcomeUnknown):  # the first try is lost
            self.inner.create_transfer(request)
        self.fake.clock.advance(WINDOW + 1)  # the claim is now older than the window
        self.resumes.extend(self.resumer[0].resume_in_flight())
        return self.inner.create_transfer(request)  # the SDK's retry

    def list_transfers(self, **filters: object) -> list[StripeTransfer]:
        return list(self.inner.list_transfers(**filters))  # type: ignore[arg-type]


def test_a_resume_during_the_claimants_retries_does_not_make_a_second_transfer(
    durable_store_url: str, make_stripe_ledger: LedgerMaker, fake: FakeStripe
) -> None:
    """Window 60 s, one try lost, a resume at 61 s: one transfer, attempt 1, its own key."""
    time = FakeTime(fake)
    resumer_box: list[PayoutLedger] = []
    inner = StripeTransferGateway(fake.api_key, api_base=fake.url, max_network_retries=0)
    claimant_gateway = ResumeBetweenTries(inner, fake, resumer_box)
    claimant = make_stripe_ledger(
        durable_store_url,
        gateway=claimant_gateway,
        clock=time,
        stripe_idempotency_window=WINDOW,
    )
    resumer_box.append(
        make_stripe_ledger(durable_store_url, clock=time, stripe_idempotency_window=WINDOW)
    )

    result = claimant.release_payment(release_request(ES))

    [resumed] = claimant_gateway.resumes
    assert resumed.outcome is ReleaseOutcome.RELEASED  # type: ignore[attr-defined]
    [transfer] = transfers_for(fake, ES)
    assert transfer["metadata"]["attempt"] == "1"
    keys = {p.idempotency_key for p in transfer_posts(fake, ES)}
    assert keys == {f"release_payment:{ES}"}
    assert claimant.get_payout(ES).transfer_id == transfer["id"]
    assert result.success and result.detail == "settled meanwhile", result

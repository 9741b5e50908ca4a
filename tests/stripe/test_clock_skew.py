"""No disagreement between hosts' clocks can make a second transfer.

The trial's finding: ``resume`` measured an attempt's age on the resuming
host's clock against ``started_at``, written by the claiming host's clock. With
the claimant 2 h fast and a resume 24.5 h after the claim, the resumer thought
the key was 22.5 h old, sent it again after Stripe had pruned it, and Stripe
paid twice. Now a resume asks Stripe first and never starts a new attempt, and
each process measures its own send window on its own monotonic clock, so wall
clocks decide nothing (docs/concepts.md gives the argument).

Each host here has its own wall clock, wrong by a fixed error, and a monotonic
clock that measures true elapsed time. Stripe keeps a key for 24 true hours.
"""

from __future__ import annotations

from itertools import product

import pytest

from payout_ledger import ReleaseOutcome
from payout_ledger.testing.fake_stripe import FakeStripe, faults
from tests.reliability import system
from tests.reliability.system import HostClock
from tests.stripe.stripe_support import LedgerMaker, release_request, transfers_for

HOUR = 3600
ERRORS = [-12 * HOUR, -3 * HOUR, 0, 2 * HOUR, 3 * HOUR, 12 * HOUR]
"""Each host's clock error: the trial's +2 h, and at least +/-3 h and +/-12 h."""
RESUME_AGES = [0.5 * HOUR, 22 * HOUR, 23 * HOUR, 23.5 * HOUR, 24.5 * HOUR, 26 * HOUR, 48 * HOUR]
"""True time between the claim and the first resume, on both sides of 24 h."""
SERVICE = "es_skew"


def _model_run(claimant_error: float, resumer_error: float, age: float, lost: bool) -> None:
    """Claim, lose the answer (or never reach Stripe), resume ``age`` later, settle."""
    from tests.reliability.stripe_model import ModelClock, ModelStripe

    clock = ModelClock()
    stripe = ModelStripe(clock, lambda _point: False)

    def true_seconds() -> float:
        return clock.now().timestamp()

    # One ledger on a memory:// log stands for both hosts: the ledger keeps no
    # state between calls, and its wall clock's error changes between them.
    host_clock = HostClock(true_seconds, claimant_error)
    ledger = system.build_ledger("memory://", "acct_model", stripe, clock=host_clock)
    if lost:
        stripe.lose_next_answer = True
    else:
        stripe.refuse_next_request = True
    assert ledger.release_payment(system.release_request(SERVICE)).in_flight
    host_clock.error = resumer_error
    clock.advance(age)

    first = ledger.resume(SERVICE)
    for _ in range(3):  # later resumes, even days later, change nothing
        clock.advance(25 * HOUR)
        ledger.resume(SERVICE)
    again = ledger.release_payment(system.release_request(SERVICE))

    where = f"claimant {claimant_error / HOUR:+g} h, resumer {resumer_error / HOUR:+g} h, "
    where += f"resume at {age / HOUR:g} h, {'answer lost' if lost else 'never sent'}"
    assert len(stripe.transfers) == 1, f"{where}: {stripe.transfers}"
    assert first.outcome is ReleaseOutcome.RELEASED, f"{where}: {first}"
    assert again.outcome is ReleaseOutcome.ALREADY_RELEASED, where
    ledger.close()


@pytest.mark.parametrize(
    ("claimant_error", "resumer_error"),
    list(product(ERRORS, ERRORS)),
    ids=lambda e: f"{e / HOUR:+g}h",
)
def test_no_pair_of_host_clock_errors_makes_a_second_transfer(
    claimant_error: float, resumer_error: float
) -> None:
    """Every pair of clock errors, resumed at every age around 24 h: one transfer."""
    for age, lost in product(RESUME_AGES, [True, False]):
        _model_run(claimant_error, resumer_error, age, lost)


@pytest.mark.parametrize(
    ("claimant_error", "resumer_error"),
    [(2 * HOUR, 0), (3 * HOUR, -3 * HOUR), (12 * HOUR, -12 * HOUR), (-12 * HOUR, 12 * HOUR)],
    ids=["trial-claimant+2h", "+3h/-3h", "+12h/-12h", "-12h/+12h"],
)
@pytest.mark.parametrize("fault", ["drop_after_commit", "drop_before_commit"])
def test_the_trials_skew_through_the_sdk_pays_once(
    durable_store_url: str,
    make_stripe_ledger: LedgerMaker,
    fake: FakeStripe,
    claimant_error: float,
    resumer_error: float,
    fault: str,
) -> None:
    """Over HTTP against the fake: claim, lose the answer, resume 24.5 true hours later."""
    claimant = make_stripe_ledger(
        durable_store_url, clock=HostClock(fake.clock.now, claimant_error)
    )
    fake.inject(getattr(faults, fault)(), method="POST", path="/v1/transfers")
    assert claimant.release_payment(release_request(SERVICE)).in_flight
    fake.clock.advance(24.5 * HOUR)  # the fake prunes keys 24 h old
    resumer = make_stripe_ledger(durable_store_url, clock=HostClock(fake.clock.now, resumer_error))

    [result] = resumer.resume_in_flight()

    transfers = transfers_for(fake, SERVICE)
    assert len(transfers) == 1, f"{len(transfers)} transfers for one service"
    assert result.outcome is ReleaseOutcome.RELEASED, result
    assert result.detail == (
        "found at Stripe" if fault == "drop_after_commit" else "retried with the same key"
    )
    assert resumer.get_payout(SERVICE).transfer_id == transfers[0]["id"]
    assert resumer.release_payment(release_request(SERVICE)).already_released

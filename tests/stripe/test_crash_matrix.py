"""A release interrupted at every point, then resumed: exactly one transfer, ever.

Each crash point runs on SQLite and PostgreSQL, and is resumed either within
hours or after more than 24 hours, when Stripe may have pruned the key. Either
way the resume looks the transfer up first and sends the attempt's request
again, with its own key, only when Stripe has none.
Resuming is done by a fresh ledger on the real gateway, as a restarted
process would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from payout_ledger import PayoutAggregate, PayoutLedger, PayoutStatus, ReleaseOutcome
from payout_ledger.service.ports import TransferRequest, TransferResult
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing.fake_stripe import FakeStripe, faults
from tests.stripe.stripe_support import (
    DAY_AND_A_BIT,
    LedgerMaker,
    MutableClock,
    SimulatedCrash,
    real_gateway,
    release_request,
    topics,
    transfer_posts,
    transfers_for,
    wait_for,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = "tests.stripe.stripe_release_worker"
CLOCKS = ["within_window", "past_24h"]
ES = "es_crash"
KEY_1 = f"release_payment:{ES}"


class CrashBeforeStripeCall:
    """A gateway whose process dies after the claim was saved, before Stripe is asked."""

    def __init__(self, inner: StripeTransferGateway) -> None:
        self.inner = inner

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        raise SimulatedCrash("killed before the Stripe call")

    def list_transfers(self, **filters: Any) -> Any:
        return self.inner.list_transfers(**filters)


class CrashOnOutcomeSave(PayoutLedger):
    """A ledger whose process dies while saving the outcome (its second save)."""

    # eventsourcing renames every subclass after itself, and on PostgreSQL the
    # name is the table: without this the crash would write to another table.
    name = "PayoutLedger"
    saves = 0

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        self.saves += any(isinstance(o, PayoutAggregate) for o in objs)  # the claim, then this
        if self.saves == 2:
            raise SimulatedCrash("killed before TransferSucceeded was saved")
        return super().save(*objs, **kwargs)


@pytest.fixture
def clock() -> MutableClock:
    return MutableClock()


@pytest.fixture(params=CLOCKS)
def when(request: pytest.FixtureRequest) -> str:
    """When the restarted process resumes: inside the key window, or past 24 h."""
    return str(request.param)


@pytest.fixture
def resumed(
    durable_store_url: str,
    make_stripe_ledger: LedgerMaker,
    fake: FakeStripe,
    clock: MutableClock,
    when: str,
) -> Any:
    """``resume()``: restart (a fresh ledger, real gateway), settle, and check the books."""

    def resume() -> tuple[PayoutLedger, list[Any], list[Any]]:
        assert len(transfers_for(fake, ES)) <= 1
        if when == "past_24h":
            clock.advance(DAY_AND_A_BIT)
            fake.clock.advance(DAY_AND_A_BIT)
        ledger = make_stripe_ledger(durable_store_url, clock=clock)
        assert ledger.in_flight() == [ES]
        posts_before = transfer_posts(fake, ES)

        results = ledger.resume_in_flight()

        [result] = results
        assert result.outcome is ReleaseOutcome.RELEASED, result
        [transfer] = transfers_for(fake, ES)
        payout = ledger.get_payout(ES)
        assert payout.status is PayoutStatus.RELEASED
        assert payout.transfer_id == transfer["id"] == result.transfer_id
        assert ledger.in_flight() == []
        assert topics(ledger, ES)[-2:] == ["TransferSucceeded", "Released"]
        assert ledger.release_payment(release_request(ES)).outcome is (
            ReleaseOutcome.ALREADY_RELEASED
        )
        return ledger, posts_before, transfer_posts(fake, ES)[len(posts_before) :]

    return resume


def assert_settled_from_the_first_attempt(
    ledger: PayoutLedger, fake: FakeStripe, resume_posts: list[Any]
) -> None:
    """For crashes after Stripe committed: the transfer of attempt 1 is found and recorded."""
    [transfer] = transfers_for(fake, ES)
    assert transfer["metadata"]["attempt"] == "1"
    assert topics(ledger, ES) == ["PayoutStarted", "TransferSucceeded", "Released"]
    assert resume_posts == []  # found by the lookup, at any age: nothing sent again


def test_a_crash_after_the_claim_before_the_stripe_call_is_paid_once_on_resume(
    durable_store_url: str,
    make_stripe_ledger: LedgerMaker,
    fake: FakeStripe,
    when: str,
    resumed: Any,
) -> None:
    """(a) PayoutStarted saved, Stripe never asked: the resume makes the only transfer."""
    crashing = make_stripe_ledger(
        durable_store_url, gateway=CrashBeforeStripeCall(real_gateway(fake))
    )
    with pytest.raises(SimulatedCrash):
        crashing.release_payment(release_request(ES))
    crashing.close()
    assert transfer_posts(fake) == []

    ledger, _, resume_posts = resumed()

    # Nothing at Stripe: attempt 1's own key makes the only transfer, at any age.
    [post] = resume_posts
    [transfer] = transfers_for(fake, ES)
    assert post.idempotency_key == KEY_1
    assert not post.replayed
    assert transfer["metadata"]["attempt"] == "1"
    assert topics(ledger, ES) == ["PayoutStarted", "TransferSucceeded", "Released"]


def test_a_lost_response_after_stripe_committed_is_settled_without_a_second_transfer(
    durable_store_url: str,
    make_stripe_ledger: LedgerMaker,
    fake: FakeStripe,
    when: str,
    resumed: Any,
) -> None:
    """(b) Stripe committed, the connection dropped: the resume records that transfer."""
    ledger = make_stripe_ledger(durable_store_url)
    fake.inject(faults.drop_after_commit())
    lost = ledger.release_payment(release_request(ES))
    assert lost.outcome is ReleaseOutcome.OUTCOME_UNKNOWN
    ledger.close()

    restarted, _, resume_posts = resumed()

    assert_settled_from_the_first_attempt(restarted, fake, resume_posts)


def test_a_crash_before_the_outcome_was_saved_is_settled_without_a_second_transfer(
    durable_store_url: str,
    make_stripe_ledger: LedgerMaker,
    fake: FakeStripe,
    when: str,
    resumed: Any,
) -> None:
    """(c) The response arrived, TransferSucceeded was never saved: resume records it."""
    crashing = make_stripe_ledger(durable_store_url, ledger_class=CrashOnOutcomeSave)
    with pytest.raises(SimulatedCrash):
        crashing.release_payment(release_request(ES))
    crashing.close()
    assert len(transfers_for(fake, ES)) == 1

    restarted, _, resume_posts = resumed()

    assert_settled_from_the_first_attempt(restarted, fake, resume_posts)


def test_a_process_killed_mid_release_is_settled_without_a_second_transfer(
    durable_store_url: str,
    fake: FakeStripe,
    account: str,
    when: str,
    resumed: Any,
) -> None:
    """(d) SIGKILL while Stripe holds the request; Stripe commits anyway; resume records it."""
    fake.inject(faults.latency(1.5))
    worker = subprocess.Popen(
        [sys.executable, "-m", WORKER, durable_store_url, fake.url, fake.api_key, account, ES],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: bool(transfer_posts(fake, ES)) or worker.poll() is not None,
            "the worker's transfer request reaches the fake",
        )
        assert worker.poll() is None, worker.communicate()
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(timeout=10) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        worker.stdout.close()  # type: ignore[union-attr]
        worker.stderr.close()  # type: ignore[union-attr]
    # The fake finishes the held request: the transfer exists, the key holds it.
    wait_for(lambda: transfer_posts(fake, ES)[0].status is not None, "the fake commits", 10)
    assert transfer_posts(fake, ES)[0].status == 200
    assert len(transfers_for(fake, ES)) == 1

    restarted, _, resume_posts = resumed()

    assert_settled_from_the_first_attempt(restarted, fake, resume_posts)


def test_past_24_hours_resending_attempt_1_with_its_key_makes_a_second_transfer(
    sqlite_url: str, make_stripe_ledger: LedgerMaker, fake: FakeStripe
) -> None:
    """Why resume looks up first: once Stripe prunes the key, the same request pays again."""
    ledger = make_stripe_ledger(sqlite_url)
    fake.inject(faults.drop_after_commit())
    assert ledger.release_payment(release_request(ES)).outcome is ReleaseOutcome.OUTCOME_UNKNOWN
    [original] = transfer_posts(fake, ES)
    client = fake.client()

    within = client.v1.transfers.create(
        original.params,  # type: ignore[arg-type]
        options={"idempotency_key": KEY_1},
    )
    assert [t["id"] for t in transfers_for(fake, ES)] == [within.id]  # replayed

    fake.clock.advance(DAY_AND_A_BIT)
    past = client.v1.transfers.create(
        original.params,  # type: ignore[arg-type]
        options={"idempotency_key": KEY_1},
    )

    assert past.id != within.id
    assert [t["id"] for t in transfers_for(fake, ES)] == [within.id, past.id]
    assert fake.balance("usd") == 10**9 - 2 * 5000


class HostLedger(PayoutLedger):
    """A host's own subclass (say, to add a query); it does not touch ``name``."""


def test_a_payout_ledger_subclass_sees_the_payouts_already_recorded(
    durable_store_url: str,
    make_stripe_ledger: LedgerMaker,
    fake: FakeStripe,
) -> None:
    """A subclass on the same store finds the released payout and does not pay again."""
    base = make_stripe_ledger(durable_store_url)
    assert base.release_payment(release_request(ES)).outcome is ReleaseOutcome.RELEASED
    subclassed = make_stripe_ledger(durable_store_url, ledger_class=HostLedger)

    again = subclassed.release_payment(release_request(ES))

    assert again.outcome is ReleaseOutcome.ALREADY_RELEASED
    assert len(transfers_for(fake, ES)) == 1


def test_a_server_error_is_settled_only_once_stripe_prunes_the_key_and_then_paid_once(
    sqlite_url: str, make_stripe_ledger: LedgerMaker, fake: FakeStripe, clock: MutableClock
) -> None:
    """Stripe replays a 500 saved under the key until it prunes it; then the same key pays."""
    ledger = make_stripe_ledger(sqlite_url, clock=clock)
    fake.inject(faults.server_error())
    assert ledger.release_payment(release_request(ES)).outcome is ReleaseOutcome.OUTCOME_UNKNOWN

    inside = ledger.resume(ES)

    assert inside.outcome is ReleaseOutcome.OUTCOME_UNKNOWN
    assert transfer_posts(fake, ES)[-1].replayed
    assert ledger.in_flight() == [ES]
    assert fake.transfers() == []

    clock.advance(DAY_AND_A_BIT)
    fake.clock.advance(DAY_AND_A_BIT)
    past = ledger.resume(ES)

    assert past.outcome is ReleaseOutcome.RELEASED
    [transfer] = transfers_for(fake, ES)
    assert transfer["metadata"]["attempt"] == "1"
    assert [p.idempotency_key for p in transfer_posts(fake, ES)] == [KEY_1, KEY_1, KEY_1]
    assert ledger.in_flight() == []

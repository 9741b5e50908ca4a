"""OS processes release the same services at once, over HTTP to one fake Stripe.

The fake runs in the test process; each child builds its own ledger on the
shared store (SQLite file or PostgreSQL schema) and the real gateway. The
fake's request log shows every transfer request that any process sent.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter

from payout_ledger.testing.fake_stripe import FakeStripe, faults
from tests.stripe.stripe_release_worker import release_services
from tests.stripe.stripe_support import transfer_posts, transfers_for
from tests.support import gather_process_results

PROCESSES = 4
SERVICES = [f"es_proc_{i}" for i in range(5)]


def test_processes_releasing_the_same_services_make_one_transfer_each(
    durable_store_url: str, fake: FakeStripe, account: str
) -> None:
    """4 processes x 5 services at the same moment: one POST and one transfer per service."""
    # Keep each winner's request in flight while the other processes decide.
    fake.inject(faults.latency(0.05), times=None)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(PROCESSES)
        with ctx.Pool(PROCESSES) as pool:
            async_results = [
                pool.apply_async(
                    release_services,
                    (durable_store_url, fake.url, fake.api_key, account, SERVICES, barrier),
                )
                for _ in range(PROCESSES)
            ]
            per_process = gather_process_results(async_results)

    for service in SERVICES:
        [transfer] = transfers_for(fake, service)
        [post] = transfer_posts(fake, service)
        assert post.idempotency_key == f"release_payment:{service}"
        assert post.status == 200
        assert transfer["destination"] == account
    assert len(fake.transfers()) == len(SERVICES)
    assert len(transfer_posts(fake)) == len(SERVICES)
    outcomes = Counter(o for outcomes in per_process for o in outcomes)
    assert set(outcomes) <= {"released", "in_progress", "already_released"}, outcomes
    assert outcomes["released"] == len(SERVICES)
    assert sum(outcomes.values()) == PROCESSES * len(SERVICES)

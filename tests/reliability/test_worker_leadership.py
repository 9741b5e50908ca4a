"""The maintenance workers' leader election, at length (long run only).

The same run as ``tests/operations/test_worker_kills.py`` (four ``payout-ledger
worker`` processes on PostgreSQL, leaders and followers SIGKILLed at random
while payouts are left in flight), for two minutes; its figures go to the
``worker_leadership`` section of the reliability figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from payout_ledger.testing.fake_stripe import FakeStripe
from tests.operations.leadership import run_leadership
from tests.operations.test_worker_kills import LEASE, check_run
from tests.reliability.config import seed
from tests.reliability.figures import FIGURES

SECTION = "worker_leadership"


@pytest.mark.postgres
@pytest.mark.reliability_long
@pytest.mark.timeout(900)
def test_one_leader_at_a_time_through_two_minutes_of_sigkills(
    postgres_url: str, fake: FakeStripe, account: str, tmp_path: Path
) -> None:
    run = run_leadership(
        postgres_url, fake, account, tmp_path, seconds=120.0, lease=LEASE, seed=seed()
    )
    figures = check_run(run, postgres_url, fake, account)
    FIGURES.row(SECTION, {"seed": seed(), **figures})
    for name in ("kills", "leader_kills", "leader_changes", "payouts", "transfers_at_stripe"):
        FIGURES.add(SECTION, name, figures[name])
    FIGURES.maximum(SECTION, "max_replacement_ms", int(figures["max_replacement_seconds"] * 1000))

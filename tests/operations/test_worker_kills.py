"""Four workers on PostgreSQL, leaders and followers SIGKILLed at random (see leadership.py).

At every moment sampled at most one session holds the lock, and no two
workers' logs say they lead at once; each killed leader is replaced within the
lease; every payout left in flight is settled with one transfer at Stripe,
the ledger and Stripe agree, and every seal anchored is one verify finds.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from payout_ledger import PayoutStatus
from payout_ledger.audit import verify_ledger
from payout_ledger.service.reconcile import reconcile
from payout_ledger.testing.fake_stripe import FakeStripe
from tests.operations.leadership import Run, host_ledger, run_leadership

LEASE = 3.0


def check_run(run: Run, store_url: str, fake: FakeStripe, account: str) -> dict[str, Any]:
    """Every claim of the test; returns the run's figures."""
    assert run.samples, "pg_locks was never sampled"
    assert max(len(s.holders) for s in run.samples) <= 1
    intervals = run.believed_intervals()
    for (_, end, pid), (start, _, next_pid) in itertools.pairwise(intervals):
        assert start >= end, f"workers {pid} and {next_pid} both said they led"
    leader_kills = [k for k in run.kills if k.was_leader]
    assert leader_kills, "no leader was killed"
    replacements = run.replacements()
    assert max(replacements) <= LEASE, replacements
    failed = {w.name: w.stderr_path.read_text()[-2000:] for w in run.workers
              if run.exit_codes.get(w.name, 0) != 0}  # fmt: skip
    assert not failed, (run.exit_codes, failed)

    transfers = fake.transfers()
    per_service = Counter(t["metadata"]["event_service_id"] for t in transfers)
    with host_ledger(store_url, fake, account) as ledger:
        assert ledger.in_flight() == []
        for service in run.services:
            payout = ledger.get_payout(service)
            assert payout.status is PayoutStatus.RELEASED, (service, payout.status)
            [transfer] = [t for t in transfers if t["metadata"]["event_service_id"] == service]
            assert payout.transfer_id == transfer["id"]
        assert reconcile(ledger, event_service_ids=run.services).ok
        anchors = [
            json.loads(line)["seal_digest"]
            for path in run.anchor_files
            if path.exists()
            for line in path.read_text().splitlines()
        ]
        report = verify_ledger(ledger, anchors=anchors)
        assert report.ok, report.problems
    assert max(per_service.values()) == 1 and len(transfers) == len(run.services)
    resumes = sum(
        1 for w in run.workers for r in w.events("resumed") if r.get("payout_ledger.outcome")
    )
    return {
        "workers_started": len(run.workers),
        "kills": len(run.kills),
        "leader_kills": len(leader_kills),
        "leader_changes": run.leader_changes(),
        "max_replacement_seconds": round(max(replacements), 3),
        "samples": len(run.samples),
        "payouts": len(run.services),
        "resumes_by_workers": resumes,
        "transfers_at_stripe": len(transfers),
        "max_transfers_per_payout": max(per_service.values()),
        "anchors_verified": len(report.anchors_found),
        "seconds_to_settle_after_releases": round(run.settle_seconds, 1),
    }


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_one_leader_at_a_time_through_sigkills_and_every_payout_settled_once(
    postgres_url: str, fake: FakeStripe, account: str, tmp_path: Path
) -> None:
    run = run_leadership(postgres_url, fake, account, tmp_path, seconds=12.0, lease=LEASE)
    figures = check_run(run, postgres_url, fake, account)
    print(json.dumps(figures))  # the run's figures, shown with -s

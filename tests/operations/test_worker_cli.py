"""`payout-ledger worker`: one cycle for a scheduler, and the loop stopped by a signal."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from payout_ledger import LedgerSettings, PayoutLedger, ServiceProvider
from payout_ledger.adapters.leader import leader_lock
from payout_ledger.cli import app
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing import InMemoryProviderDirectory
from payout_ledger.testing.fake_stripe import FakeStripe, faults
from tests.operations.workers import WorkerProcess, worker_environment
from tests.support import release


@pytest.fixture
def env(fake: FakeStripe, tmp_path: Path) -> dict[str, str]:
    return {
        "PAYOUT_LEDGER_STORE_URL": f"sqlite:///{tmp_path / 'ops.db'}",
        "PAYOUT_LEDGER_STRIPE_API_KEY": fake.api_key,
        "PAYOUT_LEDGER_STRIPE_API_BASE": fake.url,
        "PAYOUT_LEDGER_STRIPE_MAX_NETWORK_RETRIES": "0",
        "PAYOUT_LEDGER_WORKER_ANCHOR_SINK": f"file:{tmp_path / 'anchors.jsonl'}",
    }


@pytest.fixture
def host(fake: FakeStripe, env: dict[str, str]) -> Iterator[PayoutLedger]:
    account = fake.client().v1.accounts.create({"type": "express"}).id
    with PayoutLedger(
        settings=LedgerSettings(store_url=env["PAYOUT_LEDGER_STORE_URL"]),
        providers=InMemoryProviderDirectory(
            [ServiceProvider(id="prov_alice", user_id="user_alice", stripe_account_id=account)]
        ),
        gateway=StripeTransferGateway(fake.api_key, api_base=fake.url, max_network_retries=0),
    ) as ledger:
        yield ledger


def test_once_settles_a_lost_answer_seals_and_anchors(
    fake: FakeStripe, env: dict[str, str], host: PayoutLedger, tmp_path: Path
) -> None:
    fake.inject(faults.drop_after_commit())
    assert host.release_payment(release("es_1")).in_flight

    result = CliRunner().invoke(app, ["worker", "--once", "--resume-after", "0"], env=env)

    assert result.exit_code == 0, result.output
    assert "resumed 1 (settled 1" in result.stdout and "sealed #1" in result.stdout
    assert "lead start" in result.stderr and "lead end" in result.stderr
    assert host.in_flight() == [] and len(fake.transfers()) == 1
    verified = CliRunner().invoke(
        app, ["verify", "--anchor-file", str(tmp_path / "anchors.jsonl")], env=env
    )
    assert verified.exit_code == 0, verified.output
    assert "anchor found" in verified.stdout


def test_once_leaves_a_fresh_claim_to_its_release(
    fake: FakeStripe, env: dict[str, str], host: PayoutLedger
) -> None:
    fake.inject(faults.drop_before_commit())
    assert host.release_payment(release("es_1")).in_flight

    result = CliRunner().invoke(app, ["worker", "--once", "--json"], env=env)

    assert result.exit_code == 0, result.output
    cycle = json.loads(result.stdout)
    assert cycle["result"] == "clean" and cycle["not_yet_due"] == 1 and cycle["resumed"] == 0
    assert fake.transfers() == []


def test_once_exits_1_on_findings(
    fake: FakeStripe, env: dict[str, str], host: PayoutLedger
) -> None:
    paid = host.release_payment(release("es_1"))
    fake.client().v1.transfers.reversals.create(paid.transfer_id, {"amount": 100})

    result = CliRunner().invoke(app, ["worker", "--once"], env=env)

    assert result.exit_code == 1, result.output
    assert "error: 1 reconcile mismatches" in result.stderr


def test_once_does_nothing_while_another_worker_leads(
    env: dict[str, str], host: PayoutLedger
) -> None:
    host.release_payment(release("es_1"))
    settings = LedgerSettings(store_url=env["PAYOUT_LEDGER_STORE_URL"])
    with leader_lock(settings, table="payoutledger_events", lease_seconds=3) as lock:
        assert lock.try_lead()

        result = CliRunner().invoke(app, ["worker", "--once"], env=env)

    assert result.exit_code == 0, result.output
    assert "not leading" in result.stdout
    assert not (Path(env["PAYOUT_LEDGER_WORKER_ANCHOR_SINK"][5:])).exists()


def test_json_needs_once(env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["worker", "--json"], env=env)
    assert result.exit_code == 2
    assert "--json prints one cycle" in result.stderr


def test_a_bad_anchor_sink_is_named_not_shown(env: dict[str, str]) -> None:
    bad = {**env, "PAYOUT_LEDGER_WORKER_ANCHOR_SINK": "https://s3cr3t-token@example"}
    result = CliRunner().invoke(app, ["worker", "--once"], env=bad)
    assert result.exit_code == 2
    assert "PAYOUT_LEDGER_WORKER_ANCHOR_SINK" in result.stderr
    assert "s3cr3t" not in result.output


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_worker_cleanly_and_frees_the_lead(
    durable_store_url: str, tmp_path: Path, signum: signal.Signals
) -> None:
    """Exit 0 on SIGTERM or SIGINT, and the lock is free the moment it has exited."""
    with PayoutLedger(
        settings=LedgerSettings(store_url=durable_store_url, stripe_enabled=False),
        providers=InMemoryProviderDirectory(
            [ServiceProvider(id="prov_alice", user_id="user_alice")]
        ),
    ) as ledger:
        ledger.release_payment(release("es_1"))
    env = worker_environment(
        store_url=durable_store_url, stripe_enabled="false", worker_lease_seconds="600"
    )
    worker = WorkerProcess(tmp_path, "w", env, "--interval", "0.1")
    try:
        worker.wait_for("lead_start")
        worker.wait_for("cycle")

        worker.proc.send_signal(signum)
        code = worker.proc.wait(timeout=60)

        assert code == 0, worker.stderr_path.read_text()
        assert worker.events("lead_end")
        assert "stopped" in worker.stdout_path.read_text()
        settings = LedgerSettings(store_url=durable_store_url)
        with leader_lock(settings, table="payoutledger_events", lease_seconds=600) as lock:
            assert lock.try_lead(), "the stopped worker still holds the lead"
    finally:
        worker.stop()


def test_verify_refuses_a_json_anchor_line_without_a_digest(
    env: dict[str, str], host: PayoutLedger, tmp_path: Path
) -> None:
    host.release_payment(release("es_1"))
    anchors = tmp_path / "bad-anchors.jsonl"
    anchors.write_text('{"seal_number": 1}\n')

    result = CliRunner().invoke(app, ["verify", "--anchor-file", str(anchors)], env=env)

    assert result.exit_code == 2
    assert "a JSON line without a seal_digest string" in result.stderr


def test_a_signal_stops_a_single_cycle_between_two_payouts(
    fake: FakeStripe, env: dict[str, str], host: PayoutLedger, tmp_path: Path
) -> None:
    """``--once`` stopped by SIGTERM mid-cycle: exit 0 at the next payout, the rest left
    in flight for the next cycle, the lock free."""
    fake.inject(faults.drop_after_commit(), times=6)
    for n in range(6):
        assert host.release_payment(release(f"es_{n}")).in_flight
    fake.inject(faults.latency(1.0), method="GET", path="/v1/transfers", times=None)
    worker = WorkerProcess(
        tmp_path, "once", {**env, **worker_environment()}, "--once", "--resume-after", "0"
    )
    try:
        worker.wait_for("lead_start")
        worker.proc.send_signal(signal.SIGTERM)
        code = worker.proc.wait(timeout=30)
        assert code == 0, worker.stderr_path.read_text()
        resumed = worker.events("resumed")
        assert len(resumed) < 6, "the cycle went on after the signal"
        assert worker.events("lead_end")
    finally:
        worker.stop()
    assert len(host.in_flight()) == 6 - len(resumed)
    assert len(fake.transfers()) == 6  # nothing sent twice: the resumed found theirs
    settings = LedgerSettings(store_url=env["PAYOUT_LEDGER_STORE_URL"])
    with leader_lock(settings, table="payoutledger_events", lease_seconds=60) as lock:
        assert lock.try_lead(), "the stopped worker still holds the lead"

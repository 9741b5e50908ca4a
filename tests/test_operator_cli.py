"""`payout-ledger resume` and `payout-ledger reconcile`, configured by environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from payout_ledger import LedgerSettings, PayoutLedger, ServiceProvider
from payout_ledger.cli import app
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing import InMemoryProviderDirectory
from payout_ledger.testing.fake_stripe import FakeStripe, faults
from tests.support import release


@pytest.fixture
def env(fake: FakeStripe, tmp_path: Path) -> dict[str, str]:
    return {
        "PAYOUT_LEDGER_STORE_URL": f"sqlite:///{tmp_path / 'ops.db'}",
        "PAYOUT_LEDGER_STRIPE_API_KEY": fake.api_key,
        "PAYOUT_LEDGER_STRIPE_API_BASE": fake.url,
        "PAYOUT_LEDGER_STRIPE_MAX_NETWORK_RETRIES": "0",
    }


def _host_ledger(fake: FakeStripe, env: dict[str, str]) -> PayoutLedger:
    account = fake.client().v1.accounts.create({"type": "express"}).id
    return PayoutLedger(
        settings=LedgerSettings(store_url=env["PAYOUT_LEDGER_STORE_URL"]),
        providers=InMemoryProviderDirectory(
            [ServiceProvider(id="prov_alice", user_id="user_alice", stripe_account_id=account)]
        ),
        gateway=StripeTransferGateway(fake.api_key, api_base=fake.url, max_network_retries=0),
    )


def test_resume_command_settles_a_lost_response(fake: FakeStripe, env: dict[str, str]) -> None:
    """A payout whose response was lost is settled by `resume` with one transfer."""
    with _host_ledger(fake, env) as ledger:
        fake.inject(faults.drop_after_commit())
        assert ledger.release_payment(release("es_1")).in_flight

    result = CliRunner().invoke(app, ["resume"], env=env)

    assert result.exit_code == 0, result.output
    assert "es_1" in result.output and "released" in result.output
    assert len(fake.transfers()) == 1
    with _host_ledger(fake, env) as ledger:
        assert ledger.in_flight() == []


def test_resume_command_exits_1_while_stripe_is_unreachable(
    fake: FakeStripe, env: dict[str, str]
) -> None:
    """If Stripe still does not answer, resume says so with exit code 1."""
    with _host_ledger(fake, env) as ledger:
        fake.inject(faults.drop_before_commit())
        ledger.release_payment(release("es_1"))
    fake.inject(faults.server_error())

    result = CliRunner().invoke(app, ["resume"], env=env)

    assert result.exit_code == 1, result.output
    assert "outcome_unknown" in result.output


def test_reconcile_command_reports_mismatches_as_json_and_exits_1(
    fake: FakeStripe, env: dict[str, str]
) -> None:
    """A transfer reversed at Stripe but not in the ledger is a mismatch: exit 1."""
    with _host_ledger(fake, env) as ledger:
        paid = ledger.release_payment(release("es_1"))
    fake.client().v1.transfers.reversals.create(paid.transfer_id, {"amount": 100})

    result = CliRunner().invoke(app, ["reconcile", "--service", "es_1", "--json"], env=env)

    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert [m["kind"] for m in report["mismatches"]] == ["reversed"]


def test_reconcile_command_is_clean_for_agreeing_books(
    fake: FakeStripe, env: dict[str, str]
) -> None:
    """Books that agree exit 0 and say 0 mismatches."""
    with _host_ledger(fake, env) as ledger:
        ledger.release_payment(release("es_1"))

    result = CliRunner().invoke(app, ["reconcile", "--since", "2000-01-01"], env=env)

    assert result.exit_code == 0, result.output
    assert "0 mismatches" in result.output


def test_operator_commands_refuse_bad_configuration_without_leaking_secrets(
    env: dict[str, str],
) -> None:
    """A bad store URL is a one-line error, exit 2; the API key is never printed."""
    bad = {**env, "PAYOUT_LEDGER_STORE_URL": "mysql://nope"}

    result = CliRunner().invoke(app, ["resume"], env=bad)

    assert result.exit_code == 2
    assert "configuration" in result.output
    assert env["PAYOUT_LEDGER_STRIPE_API_KEY"] not in result.output

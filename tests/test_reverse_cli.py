"""`payout-ledger reverse`, and `payout-ledger resume` settling reversals in flight."""

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

_REVERSALS = "/v1/transfers/*/reversals"


@pytest.fixture
def env(fake: FakeStripe, tmp_path: Path) -> dict[str, str]:
    return {
        "PAYOUT_LEDGER_STORE_URL": f"sqlite:///{tmp_path / 'ops.db'}",
        "PAYOUT_LEDGER_STRIPE_API_KEY": fake.api_key,
        "PAYOUT_LEDGER_STRIPE_API_BASE": fake.url,
        "PAYOUT_LEDGER_STRIPE_MAX_NETWORK_RETRIES": "0",
    }


@pytest.fixture
def account(fake: FakeStripe) -> str:
    return fake.client().v1.accounts.create({"type": "express"}).id


def _host_ledger(fake: FakeStripe, env: dict[str, str], account: str) -> PayoutLedger:
    return PayoutLedger(
        settings=LedgerSettings(store_url=env["PAYOUT_LEDGER_STORE_URL"]),
        providers=InMemoryProviderDirectory(
            [ServiceProvider(id="prov_alice", user_id="user_alice", stripe_account_id=account)]
        ),
        gateway=StripeTransferGateway(fake.api_key, api_base=fake.url, max_network_retries=0),
    )


@pytest.fixture
def paid(fake: FakeStripe, env: dict[str, str], account: str) -> str:
    with _host_ledger(fake, env, account) as ledger:
        result = ledger.release_payment(release("es_1"))
    assert result.success and result.transfer_id is not None
    return result.transfer_id


def test_reverse_prints_the_result_and_exits_0(
    fake: FakeStripe, env: dict[str, str], paid: str
) -> None:
    result = CliRunner().invoke(
        app, ["reverse", "es_1", "--amount", "1000", "--reference", "re_1"], env=env
    )

    assert result.exit_code == 0, result.output
    assert "reversed" in result.output and "re_1" in result.output and "1000" in result.output
    again = CliRunner().invoke(
        app, ["reverse", "es_1", "--amount", "1000", "--reference", "re_1"], env=env
    )
    assert again.exit_code == 0, again.output
    assert "already_reversed" in again.output


def test_reverse_json_is_the_reversal_result(
    fake: FakeStripe, env: dict[str, str], paid: str
) -> None:
    result = CliRunner().invoke(
        app, ["reverse", "es_1", "--json", "--reason", "cancelled"], env=env
    )

    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert (document["outcome"], document["reference"], document["amount"]) == (
        "reversed",
        "full",
        5000,
    )
    assert document["amount_reversed"] == 5000 and document["reversal_id"].startswith("trr")
    assert document["idempotency_key"] == "reverse_payment.attempt1:es_1"


def test_a_refused_reversal_exits_1_naming_the_code(
    fake: FakeStripe, env: dict[str, str], account: str, paid: str
) -> None:
    fake.set_account_balance(account, "usd", 0)

    result = CliRunner().invoke(app, ["reverse", "es_1"], env=env)

    assert result.exit_code == 1, result.output
    assert "failed" in result.output and "balance_insufficient" in result.output


def test_a_partial_reversal_without_a_reference_is_a_usage_error(
    env: dict[str, str], paid: str
) -> None:
    """Refused before anything is recorded (ReversalRefusedError): exit 2, one line."""
    result = CliRunner().invoke(app, ["reverse", "es_1", "--amount", "10"], env=env)

    assert result.exit_code == 2
    assert "error: refused, nothing recorded: a partial reversal needs a reference" in result.output


def test_resume_settles_a_reversal_left_in_flight(
    fake: FakeStripe, env: dict[str, str], paid: str
) -> None:
    fake.inject(faults.drop_after_commit(), path=_REVERSALS)
    lost = CliRunner().invoke(
        app, ["reverse", "es_1", "--amount", "700", "--reference", "re_2"], env=env
    )
    assert lost.exit_code == 1, lost.output
    assert "outcome_unknown" in lost.output and "resume" in lost.output

    result = CliRunner().invoke(app, ["resume"], env=env)

    assert result.exit_code == 0, result.output
    assert "Resumed 1 reversal" in result.output and "re_2" in result.output
    assert "found at Stripe" in result.output
    assert len(fake.client().v1.transfers.reversals.list(paid).data) == 1


def test_resume_exits_1_while_a_reversal_stays_in_flight(
    fake: FakeStripe, env: dict[str, str], paid: str
) -> None:
    fake.inject(faults.drop_before_commit(), path=_REVERSALS)
    CliRunner().invoke(app, ["reverse", "es_1", "--amount", "700", "--reference", "re_3"], env=env)
    fake.inject(faults.server_error(), method=None, path="/v1/transfers/*", times=None)

    result = CliRunner().invoke(app, ["resume"], env=env)

    assert result.exit_code == 1, result.output
    assert "1 reversal still in flight" in result.output

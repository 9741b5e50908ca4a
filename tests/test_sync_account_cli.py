"""`payout-ledger sync-account`: ask Stripe for an account's payability and record it."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from payout_ledger import LedgerSettings, PayoutLedger, ServiceProvider
from payout_ledger.cli import app
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing import InMemoryProviderDirectory
from payout_ledger.testing.fake_stripe import FakeStripe


def _env(fake: FakeStripe, tmp_path: Path) -> dict[str, str]:
    return {
        "PAYOUT_LEDGER_STORE_URL": f"sqlite:///{tmp_path / 'ops.db'}",
        "PAYOUT_LEDGER_STRIPE_API_KEY": fake.api_key,
        "PAYOUT_LEDGER_STRIPE_API_BASE": fake.url,
        "PAYOUT_LEDGER_STRIPE_MAX_NETWORK_RETRIES": "0",
    }


def _ledger(fake: FakeStripe, env: dict[str, str], account: str) -> PayoutLedger:
    return PayoutLedger(
        settings=LedgerSettings(store_url=env["PAYOUT_LEDGER_STORE_URL"]),
        providers=InMemoryProviderDirectory(
            [ServiceProvider(id="prov_alice", user_id="user_alice", stripe_account_id=account)]
        ),
        gateway=StripeTransferGateway(fake.api_key, api_base=fake.url, max_network_retries=0),
    )


def test_sync_account_records_an_unpayable_account_and_exits_1(
    fake: FakeStripe, account: str, tmp_path: Path
) -> None:
    env = _env(fake, tmp_path)
    _ledger(fake, env, account).close()  # the store exists
    fake.set_capability(account, "transfers", "inactive")

    result = CliRunner().invoke(app, ["sync-account", account, "--json"], env=env)

    assert result.exit_code == 1, result.output
    shown = json.loads(result.stdout)
    assert (shown["payable"], shown["reason"]) == (False, "transfers_capability_inactive")
    with _ledger(fake, env, account) as ledger:
        payability = ledger.account_payability(account)
        assert payability is not None and not payability.payable


def test_sync_account_prints_a_payable_account_and_exits_0(
    fake: FakeStripe, account: str, tmp_path: Path
) -> None:
    env = _env(fake, tmp_path)
    _ledger(fake, env, account).close()

    result = CliRunner().invoke(app, ["sync-account", account], env=env)

    assert result.exit_code == 0, result.output
    assert f"{account}: payable" in result.stdout

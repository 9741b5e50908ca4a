"""What operators read: amounts and ids never cut, counts in English, odd input refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from payout_ledger import LedgerSettings, PayoutLedger, ServiceProvider
from payout_ledger.cli import app
from payout_ledger.stripe import StripeTransferGateway
from payout_ledger.testing import InMemoryProviderDirectory
from payout_ledger.testing.fake_stripe import FakeStripe, faults
from tests.support import release

BIG = 99_999_917
LONG_PROVIDER = "prov_" + "a_provider_with_a_rather_long_identifier_0123456789"
TERMINAL_80 = {"TTY_COMPATIBLE": "1", "COLUMNS": "80", "LINES": "50"}
PIPED = {"TTY_COMPATIBLE": "0", "COLUMNS": "80"}


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
            [
                ServiceProvider(id="prov_alice", user_id="user_alice", stripe_account_id=account),
                ServiceProvider(id=LONG_PROVIDER, user_id="user_long", stripe_account_id=account),
            ]
        ),
        gateway=StripeTransferGateway(fake.api_key, api_base=fake.url, max_network_retries=0),
    )


def _invoke(args: list[str], env: dict[str, str], **more: str) -> Result:
    return CliRunner().invoke(app, args, env={**env, **more})


@pytest.mark.parametrize("terminal", [PIPED, TERMINAL_80], ids=["piped", "terminal-80"])
def test_audit_never_cuts_an_amount_or_an_id(
    fake: FakeStripe, env: dict[str, str], terminal: dict[str, str]
) -> None:
    """At 80 columns or piped, every amount and provider id is printed whole."""
    with _host_ledger(fake, env) as ledger:
        ledger.release_payment(release("es_big", provider_id=LONG_PROVIDER, amount=BIG))
        fake.inject(faults.drop_before_commit())
        ledger.release_payment(release("es_flying_with_a_long_event_service_id", amount=BIG - 1))

    result = _invoke(["audit"], env, **terminal)

    assert result.exit_code == 0, result.output
    assert "…" not in result.output and "..." not in result.output
    assert str(BIG) in result.output
    assert str(BIG - 1) in result.output
    assert LONG_PROVIDER in result.output
    assert "es_flying_with_a_long_event_service_id" in result.output


@pytest.mark.parametrize("terminal", [PIPED, TERMINAL_80], ids=["piped", "terminal-80"])
def test_resume_never_cuts_a_transfer_id(
    fake: FakeStripe, env: dict[str, str], terminal: dict[str, str]
) -> None:
    """The transfer ids resume settles on are printed whole."""
    with _host_ledger(fake, env) as ledger:
        fake.inject(faults.drop_after_commit())
        ledger.release_payment(release("es_lost_response_of_a_long_named_service"))

    result = _invoke(["resume"], env, **terminal)

    assert result.exit_code == 0, result.output
    (transfer,) = fake.transfers()
    assert transfer["id"] in result.output
    assert "es_lost_response_of_a_long_named_service" in result.output
    assert "…" not in result.output


def test_counts_are_pluralised(fake: FakeStripe, env: dict[str, str]) -> None:
    """One event, one payout, one mismatch: never "1 events"."""
    with _host_ledger(fake, env) as ledger:
        ledger.seal()

    audit = _invoke(["audit"], env)
    seal = _invoke(["seal"], env)
    verify = _invoke(["verify"], env)

    for result in (audit, seal, verify):
        assert result.exit_code == 0, result.output
        assert not re.search(r"\b1 (events|payouts|aggregates|violations|seals)\b", result.output)
    assert "Audited 1 event " in audit.output
    assert "0 payouts" in audit.output


def test_resume_says_nothing_in_flight_instead_of_an_empty_table(
    fake: FakeStripe, env: dict[str, str]
) -> None:
    """No payout in flight: one sentence, exit 0."""
    with _host_ledger(fake, env) as ledger:
        ledger.release_payment(release("es_1"))

    result = _invoke(["resume"], env)

    assert result.exit_code == 0, result.output
    assert "Nothing in flight" in result.output
    assert "outcome" not in result.output


def test_reconcile_names_an_unknown_service_and_exits_1(
    fake: FakeStripe, env: dict[str, str]
) -> None:
    """A --service the ledger never recorded is said, not silently skipped (exit 1)."""
    with _host_ledger(fake, env) as ledger:
        ledger.release_payment(release("es_1"))

    result = _invoke(["reconcile", "--service", "es_1", "--service", "es_typo"], env)
    as_json = _invoke(["reconcile", "--service", "es_typo", "--json"], env)

    assert result.exit_code == 1, result.output
    assert "es_typo" in result.stderr and "no payout" in result.stderr
    assert as_json.exit_code == 1, as_json.output
    report = json.loads(as_json.stdout)
    assert report["unknown_services"] == ["es_typo"]
    assert report["ok"] is False


def test_reconcile_refuses_an_inverted_window(fake: FakeStripe, env: dict[str, str]) -> None:
    """--since after --until is a usage error (exit 2), before anything is opened."""
    result = _invoke(["reconcile", "--since", "2024-02-01", "--until", "2024-01-01"], env)

    assert result.exit_code == 2, result.output
    assert "--since" in result.stderr and "--until" in result.stderr


def test_json_shapes_are_the_documented_ones(fake: FakeStripe, env: dict[str, str]) -> None:
    """The top-level keys of each --json report are those the cli module documents."""
    with _host_ledger(fake, env) as ledger:
        ledger.release_payment(release("es_1"))

    shapes = {
        "audit": {
            "ok", "events", "last_notification_id", "payouts", "events_by_type",
            "currencies", "providers", "in_flight", "reversals_in_flight", "violations",
            "checkpoint", "incremental",
        },
        "verify": {
            "ok", "events", "aggregates", "chained_events", "legacy_events", "v1_links",
            "last_notification_id", "log_digest", "seals", "latest_seal", "unsealed_events",
            "anchors_found", "problems", "checkpoint", "incremental", "processes",
        },
        "seal": {
            "seal_number", "through_notification_id", "event_count", "log_digest",
            "seal_digest", "sealed_at",
        },
        "reconcile": {
            "payouts_checked", "transfers_checked", "ok", "mismatches", "reversals_in_flight",
            "unknown_services",
        },
    }  # fmt: skip
    for command, keys in shapes.items():
        extra = ["--since", "2000-01-01"] if command == "reconcile" else []
        result = _invoke([command, "--json", *extra], env)

        assert result.exit_code == 0, result.output
        assert set(json.loads(result.stdout)) == keys, command

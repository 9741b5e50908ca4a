"""`payout-ledger release-many FILE`: JSON Lines or CSV, progress, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from payout_ledger import LedgerSettings, PayoutLedger
from payout_ledger.cli import app
from payout_ledger.testing import InMemoryProviderDirectory
from payout_ledger.testing.fake_stripe import FakeStripe


@pytest.fixture
def env(fake: FakeStripe, tmp_path: Path) -> dict[str, str]:
    store_url = f"sqlite:///{tmp_path / 'ops.db'}"
    # The host's store exists before the operator's command runs.
    PayoutLedger(
        settings=LedgerSettings(store_url=store_url, stripe_enabled=False),
        providers=InMemoryProviderDirectory([]),
    ).close()
    return {
        "PAYOUT_LEDGER_STORE_URL": store_url,
        "PAYOUT_LEDGER_STRIPE_API_KEY": fake.api_key,
        "PAYOUT_LEDGER_STRIPE_API_BASE": fake.url,
        "PAYOUT_LEDGER_STRIPE_MAX_NETWORK_RETRIES": "0",
        "PAYOUT_LEDGER_BULK_RATE_LIMIT": "1000",
    }


def _row(n: int, account: str, **changes: Any) -> dict[str, Any]:
    return {
        "event_service_id": f"es_{n}",
        "provider_id": "prov_alice",
        "provider_user_id": "user_alice",
        "stripe_account_id": account,
        "amount": 1000 + n,
        "currency": "usd",
        **changes,
    }


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _posts(fake: FakeStripe) -> list[Any]:
    return [r for r in fake.requests if r.method == "POST" and r.path == "/v1/transfers"]


def test_a_jsonl_file_is_released_and_a_second_run_pays_nobody_twice(
    fake: FakeStripe, env: dict[str, str], account: str, tmp_path: Path
) -> None:
    file = _jsonl(tmp_path / "batch.jsonl", [_row(n, account) for n in range(3)])

    result = CliRunner().invoke(app, ["release-many", file], env=env)
    assert result.exit_code == 0, result.output
    assert "Released 3 payments of 3" in result.stdout
    assert "release-many: 3/3 done, 3 released" in result.stderr  # plain progress off a tty
    assert sorted(t["amount"] for t in fake.transfers()) == [1000, 1001, 1002]

    again = CliRunner().invoke(app, ["release-many", file, "--json"], env=env)
    assert again.exit_code == 0, again.output
    document = json.loads(again.stdout)
    assert document["counts"] == {"already_released": 3}
    assert document["released"] == 3 and document["not_released"] == []
    assert len(fake.transfers()) == 3 and len(_posts(fake)) == 3


def test_a_csv_on_stdin_with_json_output(
    fake: FakeStripe, env: dict[str, str], account: str
) -> None:
    csv_text = (
        "event_service_id,provider_id,provider_user_id,stripe_account_id,amount,currency,"
        "description\n"
        f"es_1,prov_alice,user_alice,{account},2500,usd,Cleaning\n"
        f"es_2,prov_alice,user_alice,{account},2600,usd,\n"
    )
    result = CliRunner().invoke(app, ["release-many", "-", "--json"], env=env, input=csv_text)

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["items"], document["counts"]) == (2, {"released": 2})
    assert set(document) == {"items", "released", "counts", "seconds", "governor", "not_released"}
    assert document["governor"]["tokens"] == 2
    assert sorted(t["amount"] for t in fake.transfers()) == [2500, 2600]
    described = {t["amount"]: t.get("description") for t in fake.transfers()}
    assert described == {2500: "Cleaning", 2600: None}


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"event_service_id": "es_9", "amount": 5}', "line 2"),
        ("not json", "line 2: not JSON"),
        ('["a list"]', "line 2: not a JSON object"),
    ],
)
def test_a_bad_row_refuses_the_whole_file_with_exit_2(
    fake: FakeStripe, env: dict[str, str], account: str, tmp_path: Path, line: str, why: str
) -> None:
    file = tmp_path / "batch.jsonl"
    file.write_text(json.dumps(_row(1, account)) + "\n" + line + "\n")

    result = CliRunner().invoke(app, ["release-many", str(file)], env=env)

    assert result.exit_code == 2, result.output
    assert why in result.stderr and "nothing released" in result.stderr
    assert result.stdout == ""
    assert _posts(fake) == []


def test_an_event_service_twice_or_a_provider_named_two_ways_is_bad_input(
    fake: FakeStripe, env: dict[str, str], account: str, tmp_path: Path
) -> None:
    twice = _jsonl(tmp_path / "twice.jsonl", [_row(1, account), _row(1, account)])
    result = CliRunner().invoke(app, ["release-many", twice], env=env)
    assert result.exit_code == 2, result.output
    assert "line 2" in result.stderr and "es_1" in result.stderr

    other = fake.client().v1.accounts.create({"type": "express"}).id
    two_ways = _jsonl(
        tmp_path / "two.jsonl", [_row(1, account), _row(2, account, stripe_account_id=other)]
    )
    result = CliRunner().invoke(app, ["release-many", two_ways], env=env)
    assert result.exit_code == 2, result.output
    assert "line 2: provider 'prov_alice'" in result.stderr
    assert _posts(fake) == []


def test_a_csv_without_a_required_column_is_bad_input(
    fake: FakeStripe, env: dict[str, str], tmp_path: Path
) -> None:
    file = tmp_path / "batch.csv"
    file.write_text("event_service_id,provider_id,amount,currency\nes_1,prov_alice,100,usd\n")
    result = CliRunner().invoke(app, ["release-many", str(file)], env=env)
    assert result.exit_code == 2, result.output
    assert "missing column(s) provider_user_id, stripe_account_id" in result.stderr


def test_items_not_released_exit_1_and_are_listed(
    fake: FakeStripe, env: dict[str, str], account: str, tmp_path: Path
) -> None:
    first = _jsonl(tmp_path / "first.jsonl", [_row(1, account)])
    assert CliRunner().invoke(app, ["release-many", first], env=env).exit_code == 0
    # es_1 again with another amount: the ledger refuses that item only.
    file = _jsonl(tmp_path / "batch.jsonl", [_row(2, account), _row(1, account, amount=7)])

    result = CliRunner().invoke(app, ["release-many", file, "--json"], env=env)

    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    assert document["counts"] == {"rejected": 1, "released": 1}
    [missing] = document["not_released"]
    assert (missing["line"], missing["event_service_id"], missing["outcome"]) == (
        2,
        "es_1",
        "rejected",
    )
    assert missing["error_code"] == "ReleaseConflictError"
    assert "error: 1 of 2 not released" in result.stderr

    table = CliRunner().invoke(app, ["release-many", file], env=env)
    assert table.exit_code == 1
    assert "Not released" in table.stdout and "es_1" in table.stdout


def test_the_stripe_key_never_shows(
    fake: FakeStripe, env: dict[str, str], account: str, tmp_path: Path
) -> None:
    file = _jsonl(tmp_path / "batch.jsonl", [_row(1, account)])
    result = CliRunner().invoke(app, ["release-many", file, "--json"], env=env)
    assert fake.api_key not in result.output


def test_a_csv_saved_with_a_bom_and_a_currency_given_twice(
    fake: FakeStripe, env: dict[str, str], account: str, tmp_path: Path
) -> None:
    csv_file = tmp_path / "batch.csv"
    csv_file.write_text(
        "\ufeffevent_service_id,provider_id,provider_user_id,stripe_account_id,amount,currency\n"
        f"es_1,prov_alice,user_alice,{account},2500,usd\n",
        encoding="utf-8",
    )
    assert CliRunner().invoke(app, ["release-many", str(csv_file)], env=env).exit_code == 0

    twice = _jsonl(
        tmp_path / "twice.jsonl",
        [_row(2, account, amount={"amount": 5, "currency": "eur"}, currency="usd")],
    )
    result = CliRunner().invoke(app, ["release-many", twice], env=env)
    assert result.exit_code == 2, result.output
    assert "line 1" in result.stderr and "currency" in result.stderr
    assert len(fake.transfers()) == 1

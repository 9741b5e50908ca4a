"""`payout-ledger export`: every event, or every payout, as JSON Lines or CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from payout_ledger import LedgerSettings, PayoutAggregate, PayoutLedger
from payout_ledger.audit import export_events, export_payouts, verify_ledger
from payout_ledger.audit.export import EVENT_COLUMNS, PAYOUT_COLUMNS
from payout_ledger.cli import app
from payout_ledger.domain.chain import GENESIS
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.audit.scenario import run_scenario
from tests.audit.support import replay_all


def jsonl(ledger: PayoutLedger) -> list[dict[str, Any]]:
    out = io.StringIO()
    count = export_events(ledger, out, fmt="jsonl")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert count == len(lines)
    return lines


def test_every_event_is_exported_in_log_order_with_its_chain(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """One line per stored event; previous_hash is the digest of the aggregate's line before."""
    run_scenario(ledger, gateway)
    ledger.seal()

    lines = jsonl(ledger)

    assert [line["notification_id"] for line in lines] == list(range(1, len(lines) + 1))
    assert len(lines) == verify_ledger(ledger).events
    heads: dict[str, str] = {}
    for line in lines:
        assert line["previous_hash"] == heads.get(line["originator_id"], GENESIS)
        heads[line["originator_id"]] = line["digest"]


def test_exported_fields_are_the_events_fields(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """An auditor sees what was recorded: the destination account, amounts, transfer ids."""
    run_scenario(ledger, gateway)

    lines = jsonl(ledger)

    started = [line for line in lines if line["event_type"] == "PayoutStarted"]
    for line in started:
        payout = ledger.get_payout(line["fields"]["event_service_id"])
        assert line["fields"]["destination_account"] == payout.destination_account
        assert line["fields"]["amount"] == payout.amount
        assert line["originator_id"] == str(payout.id)


def test_csv_has_the_same_events_as_json_lines(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """The CSV columns flatten the common fields and keep every field as JSON."""
    run_scenario(ledger, gateway)
    lines = jsonl(ledger)
    out = io.StringIO()

    count = export_events(ledger, out, fmt="csv")

    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert tuple(rows[0]) == EVENT_COLUMNS
    assert count == len(rows) == len(lines)
    for row, line in zip(rows, lines, strict=True):
        assert row["digest"] == line["digest"]
        assert json.loads(row["fields"]) == line["fields"]
        assert row["amount"] == str(line["fields"].get("amount") or "")


def test_the_payouts_export_has_one_row_per_payout(
    ledger: PayoutLedger, gateway: InMemoryTransferGateway
) -> None:
    """Status, amount, transfer and reversal of every payout, as replayed."""
    run_scenario(ledger, gateway)
    out = io.StringIO()

    export_payouts(ledger, out, fmt="csv")

    rows = {r["event_service_id"]: r for r in csv.DictReader(io.StringIO(out.getvalue()))}
    payouts = [a for a in replay_all(ledger).values() if isinstance(a, PayoutAggregate)]
    assert set(rows) == {p.event_service_id for p in payouts}
    for p in payouts:
        row = rows[p.event_service_id]
        assert tuple(row) == PAYOUT_COLUMNS
        assert (row["status"], int(row["amount"]), row["transfer_id"] or None) == (
            p.status.value,
            p.amount,
            p.transfer_id,
        )
        assert int(row["amount_reversed"]) == p.amount_reversed


def test_the_export_command_writes_a_file(
    durable_store_url: str,
    providers: InMemoryProviderDirectory,
    gateway: InMemoryTransferGateway,
    tmp_path: Path,
) -> None:
    """`payout-ledger export --format csv -o FILE` and `--what payouts` to stdout."""
    with PayoutLedger(
        settings=LedgerSettings(store_url=durable_store_url), providers=providers, gateway=gateway
    ) as writer:
        run_scenario(writer, gateway)
        events = writer.recorder.max_notification_id()
    env = {"PAYOUT_LEDGER_STORE_URL": durable_store_url}
    target = tmp_path / "events.csv"

    written = CliRunner().invoke(app, ["export", "--format", "csv", "-o", str(target)], env=env)
    payouts = CliRunner().invoke(app, ["export", "--what", "payouts"], env=env)

    assert written.exit_code == 0, written.output
    with target.open(newline="", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == events
    assert payouts.exit_code == 0
    statuses = {json.loads(line)["status"] for line in payouts.stdout.splitlines()}
    assert "released" in statuses and "in_flight" in statuses

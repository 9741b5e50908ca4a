"""The README's main job: ``payout-ledger demo``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from payout_ledger.cli import app
from payout_ledger.cli.demo import run_demo
from payout_ledger.service.requests import ReleaseOutcome


def test_demo_pays_each_service_once_and_shows_the_seed_outcomes(
    tmp_path: Path,
) -> None:
    """The demo's races, onboarding and decline end with two transfers for three services."""
    report = run_demo(tmp_path / "demo.db")

    outcomes = [step.result.outcome for step in report.steps]
    race = outcomes[:8]
    assert race.count(ReleaseOutcome.RELEASED) == 1
    assert set(race) <= {
        ReleaseOutcome.RELEASED,
        ReleaseOutcome.IN_PROGRESS,
        ReleaseOutcome.ALREADY_RELEASED,
    }
    assert outcomes[8:] == [
        ReleaseOutcome.ALREADY_RELEASED,
        ReleaseOutcome.ONBOARDING_REQUIRED,
        ReleaseOutcome.FAILED,
        ReleaseOutcome.RELEASED,
    ]
    assert (report.gateway_calls, report.transfers) == (3, 2)
    assert [type(e).__name__ for e in report.history] == [
        "PayoutStarted",
        "TransferFailed",
        "PayoutStarted",
        "TransferSucceeded",
        "Released",
    ]
    assert (tmp_path / "demo.db").stat().st_size > 0


def test_demo_command_prints_the_tables(tmp_path: Path) -> None:
    """`payout-ledger demo` prints the releases and one payout's history."""
    result = CliRunner().invoke(app, ["demo", "--db", str(tmp_path / "d.db")])

    assert result.exit_code == 0, result.output
    assert "Releases" in result.output
    assert "onboarding_required" in result.output
    assert "Event history of es_1003" in result.output
    assert "release_payment.attempt2:es_1003" in result.output


def test_console_script_is_installed() -> None:
    """The installed `payout-ledger` entry point answers --help."""
    script = Path(sys.executable).with_name("payout-ledger")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout

"""The operator's command line: ``payout-ledger``. Nothing imports this module."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from payout_ledger.demo import run_demo
from payout_ledger.payout import PayoutAggregate
from payout_ledger.release import ReleaseOutcome

app = typer.Typer(
    help="Release marketplace payments through Stripe Connect, exactly once.",
    no_args_is_help=True,
    add_completion=False,
)

_STYLE = {
    ReleaseOutcome.RELEASED: "bold green",
    ReleaseOutcome.ALREADY_RELEASED: "green",
    ReleaseOutcome.IN_PROGRESS: "yellow",
    ReleaseOutcome.ONBOARDING_REQUIRED: "magenta",
    ReleaseOutcome.FAILED: "red",
    ReleaseOutcome.OUTCOME_UNKNOWN: "bold red",
    ReleaseOutcome.NOT_EXECUTED: "yellow",
}


@app.callback()
def _root() -> None:
    """Release marketplace payments through Stripe Connect, exactly once."""


@app.command()
def demo(
    db: Annotated[
        Path | None,
        typer.Option(help="SQLite file to write (recreated). Default: a temporary file."),
    ] = None,
) -> None:
    """Release a few event services on an SQLite file and show what happened."""
    console = Console()
    database = db or Path(tempfile.gettempdir()) / "payout-ledger-demo.db"
    report = run_demo(database)

    table = Table(title="Releases", title_justify="left", show_lines=False)
    table.add_column("scenario", no_wrap=True)
    table.add_column("caller", no_wrap=True)
    table.add_column("service", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("transfer", no_wrap=True, min_width=13)
    previous = None
    for step in report.steps:
        r = step.result
        if previous is not None and step.scenario != previous:
            table.add_section()
        table.add_row(
            step.scenario if step.scenario != previous else "",
            step.caller,
            r.event_service_id,
            f"[{_STYLE[r.outcome]}]{r.outcome.value}[/]",
            r.transfer_id or "-",
        )
        previous = step.scenario
    console.print(table)

    history = Table(title=f"Event history of {report.history_of}", title_justify="left")
    history.add_column("v", no_wrap=True)
    history.add_column("event", no_wrap=True)
    history.add_column("at (UTC)", no_wrap=True)
    history.add_column("recorded", overflow="fold")
    for event in report.history:
        history.add_row(
            str(event.originator_version),
            type(event).__name__,
            event.timestamp.strftime("%H:%M:%S.%f")[:-3],
            _describe(event),
        )
    console.print(history)
    console.print(
        f"Stripe was called {report.gateway_calls} times and made "
        f"{report.transfers} transfers for 3 event services "
        f"({len(report.steps)} release calls). Events are in {report.database}."
    )


def _describe(event: PayoutAggregate.Event) -> str:
    if isinstance(event, PayoutAggregate.PayoutStarted):
        return (
            f"attempt {event.attempt}: {event.amount} {event.currency} "
            f"to {event.destination_account} (payee {event.payee_user_id}), "
            f"key {event.idempotency_key}"
        )
    if isinstance(event, PayoutAggregate.TransferFailed):
        return f"attempt {event.attempt}: {event.failure_code}: {event.failure_message}"
    if isinstance(event, PayoutAggregate.TransferSucceeded):
        return f"attempt {event.attempt}: transfer {event.transfer_id}"
    if isinstance(event, PayoutAggregate.Released):
        return f"{event.amount} {event.currency} released to {event.payee_user_id}"
    return ""


def main() -> None:
    app()

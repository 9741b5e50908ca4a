"""The operator's command line: ``payout-ledger``. Nothing imports this module."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from payout_ledger.demo import run_demo
from payout_ledger.errors import PayoutLedgerError
from payout_ledger.ledger import PayoutLedger
from payout_ledger.payout import PayoutAggregate
from payout_ledger.ports import ServiceProvider
from payout_ledger.reconcile import reconcile
from payout_ledger.release import ReleaseOutcome
from payout_ledger.settings import LedgerSettings
from payout_ledger.stripe.gateway import StripeTransferGateway

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


def _operator_ledger(store_url: str | None) -> PayoutLedger:
    """A ledger configured from PAYOUT_LEDGER_* variables, for operator commands."""
    try:
        overrides = {"store_url": store_url} if store_url else {}
        settings = LedgerSettings(**overrides)  # type: ignore[arg-type]
        gateway = StripeTransferGateway.from_settings(settings) if settings.stripe_enabled else None
        return PayoutLedger(settings=settings, providers=_NoProviders(), gateway=gateway)
    except (PayoutLedgerError, ValidationError) as exc:
        _fail(f"configuration: {_first_line(exc)}")


class _NoProviders:
    """Operator commands settle recorded payouts; they never look providers up."""

    def get_provider(self, provider_id: str) -> ServiceProvider | None:
        return None


def _fail(message: str, code: int = 2) -> NoReturn:
    Console(stderr=True).print(f"[red]error:[/] {message}")
    raise typer.Exit(code)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


StoreOption = Annotated[
    str | None,
    typer.Option("--store-url", help="Overrides PAYOUT_LEDGER_STORE_URL."),
]


@app.command()
def resume(store_url: StoreOption = None) -> None:
    """Settle every payout left in flight; exit 1 if any is still unsettled."""
    with _operator_ledger(store_url) as ledger:
        results = ledger.resume_in_flight()
    table = Table(title=f"Resumed {len(results)} in-flight payouts", title_justify="left")
    for column in ("service", "outcome", "attempt", "transfer", "how"):
        table.add_column(column)
    for r in results:
        table.add_row(
            r.event_service_id,
            f"[{_STYLE[r.outcome]}]{r.outcome.value}[/]",
            str(r.attempt),
            r.transfer_id or "-",
            r.detail or r.error_code or "",
        )
    Console().print(table)
    if any(r.in_flight for r in results):
        raise typer.Exit(1)


@app.command("reconcile")
def reconcile_command(
    service: Annotated[
        list[str] | None, typer.Option("--service", help="An event service id (repeatable).")
    ] = None,
    since: Annotated[
        datetime | None, typer.Option(help="Window start (ISO 8601, UTC if no zone).")
    ] = None,
    until: Annotated[datetime | None, typer.Option(help="Window end, exclusive.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    store_url: StoreOption = None,
) -> None:
    """Compare the ledger with Stripe's transfers; exit 1 on any mismatch."""
    if service and (since or until):
        _fail("give --service or a --since/--until window, not both")
    with _operator_ledger(store_url) as ledger:
        try:
            report = reconcile(
                ledger,
                event_service_ids=service or None,
                since=_utc(since),
                until=_utc(until),
            )
        except PayoutLedgerError as exc:
            _fail(_first_line(exc))
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        table = Table(
            title=f"{report.payouts_checked} payouts, {report.transfers_checked} transfers: "
            f"{len(report.mismatches)} mismatches",
            title_justify="left",
        )
        for column in ("kind", "service", "transfer", "ledger", "stripe"):
            table.add_column(column, overflow="fold")
        for m in report.mismatches:
            table.add_row(
                m.kind.value,
                m.event_service_id or "-",
                m.transfer_id or "-",
                str(m.ledger),
                str(m.stripe),
            )
        Console().print(table)
    if not report.ok:
        raise typer.Exit(1)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


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

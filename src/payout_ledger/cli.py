"""The operator's command line: ``payout-ledger``. Nothing imports this module."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TextIO, cast

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.table import Table

from payout_ledger.audit import (
    audit_ledger,
    export_events,
    export_payouts,
    last_notification_id,
    verify_ledger,
)
from payout_ledger.demo import run_demo
from payout_ledger.errors import ConfigurationError, PayoutLedgerError
from payout_ledger.ledger import PayoutLedger
from payout_ledger.payout import PayoutAggregate
from payout_ledger.ports import (
    ServiceProvider,
    StripeTransfer,
    TransferGateway,
    TransferRequest,
    TransferResult,
)
from payout_ledger.projection import open_payouts_view, run_projection
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


def _operator_ledger(store_url: str | None, *, calls_stripe: bool = True) -> PayoutLedger:
    """A ledger configured from PAYOUT_LEDGER_* variables, for operator commands.

    ``calls_stripe=False``: for commands that only read (and seal); its gateway
    refuses every call.
    """
    try:
        overrides = {"store_url": store_url} if store_url else {}
        settings = LedgerSettings(**overrides)  # type: ignore[arg-type]
        gateway: TransferGateway | None = None
        if settings.stripe_enabled:
            gateway = (
                StripeTransferGateway.from_settings(settings) if calls_stripe else _NoTransfers()
            )
        return PayoutLedger(settings=settings, providers=_NoProviders(), gateway=gateway)
    except (PayoutLedgerError, ValidationError, SettingsError) as exc:
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
        try:
            results = ledger.resume_in_flight()
        except ConfigurationError as exc:
            _fail(f"configuration: {_first_line(exc)}")
    table = Table(title=f"Resumed {len(results)} in-flight payouts", title_justify="left")
    for column in ("service", "outcome", "attempt", "transfer", "how"):
        table.add_column(column)
    for r in results:
        how = r.detail or r.error_code or ""
        if r.error_code == "cannot_resume":
            how = f"cannot resume: {r.error_message}"
        table.add_row(
            r.event_service_id,
            f"[{_STYLE[r.outcome]}]{r.outcome.value}[/]",
            str(r.attempt),
            r.transfer_id or "-",
            how,
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


# Audit commands: they read the log and never call Stripe.

_PROGRESS_FROM = 20_000
"""Show a progress bar when the log has at least this many events (and stdout is a terminal)."""


class _NoTransfers:
    """The gateway of audit commands: they never move money."""

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        raise ConfigurationError("audit commands do not make transfers")

    def list_transfers(
        self,
        *,
        transfer_group: str | None = None,
        created_gte: int | None = None,
        created_lt: int | None = None,
    ) -> list[StripeTransfer]:
        raise ConfigurationError("audit commands do not call Stripe")


def _reading_ledger(store_url: str | None) -> PayoutLedger:
    """A ledger for commands that only read (and seal): it never calls Stripe."""
    return _operator_ledger(store_url, calls_stripe=False)


@contextmanager
def _progress(
    ledger: PayoutLedger, label: str, enabled: bool
) -> Iterator[Callable[[int, int], None] | None]:
    """An ``on_page`` callback drawing a progress bar on stderr, or None."""
    total = last_notification_id(ledger) if enabled else 0
    if not enabled or total < _PROGRESS_FROM or not Console().is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = (BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda last_id, _count: bar.update(task, completed=last_id)


PageSizeOption = Annotated[
    int, typer.Option(min=10, max=100_000, help="Stored events read per query.")
]
ProgressOption = Annotated[
    bool, typer.Option("--progress/--no-progress", help="A progress bar on long logs.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.command("audit")
def audit_command(
    as_json: JsonOption = False,
    page_size: PageSizeOption = 2000,
    progress: ProgressOption = True,
    store_url: StoreOption = None,
) -> None:
    """Replay every payout from the log and check the money rules; exit 1 on a violation."""
    with _reading_ledger(store_url) as ledger, _progress(ledger, "audit", progress) as on_page:
        report = audit_ledger(ledger, page_size=page_size, on_page=on_page)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _print_audit(report)
    if not report.ok:
        first = report.violations[0]
        _fail(
            f"{len(report.violations)} violation(s); first: {first.kind.value} at notification "
            f"{first.notification_id} ({first.event_type} v{first.originator_version} of payout "
            f"{first.payout_id}): {first.detail}",
            code=1,
        )


def _print_audit(report: Any) -> None:
    console = Console()
    console.print(
        f"Audited {report.events} events (through notification {report.last_notification_id}): "
        f"{report.payouts} payouts, {len(report.in_flight)} in flight, "
        f"{len(report.violations)} violations."
    )
    money = Table(title="Per currency (minor units)", title_justify="left")
    for column in (
        "currency",
        "payouts",
        "released",
        "released amount",
        "reversed",
        "net",
        "in flight",
        "in flight amount",
        "failed",
        "captured amount",
    ):
        money.add_column(column, justify="right" if column != "currency" else "left")
    for c in report.currencies:
        money.add_row(
            c.currency, str(c.payouts), str(c.released), str(c.released_amount),
            str(c.reversed_amount), str(c.net_amount), str(c.in_flight),
            str(c.in_flight_amount), str(c.failed), str(c.captured_amount),
        )  # fmt: skip
    console.print(money)
    providers = Table(title="Per provider (minor units)", title_justify="left")
    for column in (
        "provider",
        "currency",
        "payouts",
        "released",
        "released amount",
        "reversed",
        "net",
        "in flight",
    ):
        providers.add_column(column)
    for p in report.providers:
        providers.add_row(
            p.provider_id, p.currency, str(p.payouts), str(p.released),
            str(p.released_amount), str(p.reversed_amount), str(p.net_amount), str(p.in_flight),
        )  # fmt: skip
    console.print(providers)
    if report.in_flight:
        flights = Table(title="In flight (no outcome recorded yet)", title_justify="left")
        for column in ("service", "attempt", "amount", "since notification"):
            flights.add_column(column)
        for f in report.in_flight[:_SHOWN]:
            flights.add_row(
                f.event_service_id, str(f.attempt), f"{f.amount} {f.currency}",
                str(f.started_notification_id),
            )  # fmt: skip
        console.print(flights)
        if len(report.in_flight) > _SHOWN:
            console.print(f"... and {len(report.in_flight) - _SHOWN} more (--json lists all)")
    if report.violations:
        table = Table(title="[red]Violations[/]", title_justify="left")
        for column in ("rule", "notification", "event", "service", "payout", "detail"):
            table.add_column(column, overflow="fold")
        for v in report.violations:
            table.add_row(
                f"[red]{v.kind.value}[/]", str(v.notification_id),
                f"{v.event_type} v{v.originator_version}", v.event_service_id or "-",
                v.payout_id, v.detail,
            )  # fmt: skip
        console.print(table)


_SHOWN = 50


@app.command("verify")
def verify_command(
    anchor: Annotated[
        list[str] | None,
        typer.Option(help="A seal digest kept outside the database (repeatable)."),
    ] = None,
    anchor_file: Annotated[
        Path | None,
        typer.Option(help="A file of anchored seal digests, one per line.", exists=True),
    ] = None,
    strict: Annotated[
        bool, typer.Option(help="Refuse events stored before chaining (legacy).")
    ] = False,
    as_json: JsonOption = False,
    page_size: PageSizeOption = 2000,
    progress: ProgressOption = True,
    store_url: StoreOption = None,
) -> None:
    """Recompute every hash chain and seal; exit 1 if the log was tampered with."""
    anchors = list(anchor or [])
    if anchor_file is not None:
        anchors += [
            line.split()[0] for line in anchor_file.read_text().splitlines() if line.strip()
        ]
    with _reading_ledger(store_url) as ledger, _progress(ledger, "verify", progress) as on_page:
        report = verify_ledger(
            ledger, anchors=anchors, strict=strict, page_size=page_size, on_page=on_page
        )
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _print_verify(report)
    if not report.ok:
        first = report.problems[0]
        where = f"notification {first.notification_id}" if first.notification_id else "the log"
        _fail(
            f"{len(report.problems)} problem(s); first: {first.kind.value} at {where}: "
            f"{first.detail}",
            code=1,
        )


def _print_verify(report: Any) -> None:
    console = Console()
    console.print(
        f"Verified {report.events} events of {report.aggregates} aggregates: "
        f"{report.chained_events} chained, {report.legacy_events} legacy (unchained), "
        f"{report.seals} seals, {report.unsealed_events} events after the latest seal."
    )
    console.print(f"Log digest now: {report.log_digest}")
    if report.latest_seal is not None:
        seal = report.latest_seal
        console.print(
            f"Latest seal #{seal.seal_number} through notification "
            f"{seal.through_notification_id} ({seal.event_count} events), "
            f"sealed {seal.sealed_at.isoformat()}; anchor this outside the database:\n"
            f"[bold]{seal.seal_digest}[/]"
        )
    else:
        console.print("[yellow]The log has never been sealed: run `payout-ledger seal`.[/]")
    for found in report.anchors_found:
        console.print(f"[green]anchor found[/] {found}")
    if report.problems:
        table = Table(title="[red]Problems[/]", title_justify="left")
        for column in ("kind", "notification", "aggregate", "version", "detail"):
            table.add_column(column, overflow="fold")
        for p in report.problems:
            table.add_row(
                f"[red]{p.kind.value}[/]", str(p.notification_id or "-"),
                p.originator_id or "-", str(p.originator_version or "-"), p.detail,
            )  # fmt: skip
        console.print(table)
    else:
        console.print("[green]No tampering found.[/]")


@app.command("seal")
def seal_command(as_json: JsonOption = False, store_url: StoreOption = None) -> None:
    """Seal the log so far (count and rolling digest); print the digest to anchor."""
    with _reading_ledger(store_url) as ledger:
        try:
            info = ledger.seal()
        except PayoutLedgerError as exc:
            _fail(_first_line(exc))
    if as_json:
        typer.echo(json.dumps(info.as_dict(), indent=2))
        return
    Console().print(
        f"Seal #{info.seal_number}: {info.event_count} events through notification "
        f"{info.through_notification_id}, log digest {info.log_digest}.\n"
        f"Anchor this seal digest outside the database:\n[bold]{info.seal_digest}[/]"
    )


@app.command("project")
def project_command(
    rebuild: Annotated[
        bool, typer.Option(help="Empty the payouts table and replay the log into it.")
    ] = False,
    follow: Annotated[bool, typer.Option(help="Keep polling for new events.")] = False,
    poll_interval: Annotated[float, typer.Option(min=0.05, help="Seconds between polls.")] = 1.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Events per transaction.")] = 1000,
    store_url: StoreOption = None,
) -> None:
    """Bring the payouts read model up to date (exactly once, resumable)."""
    with _reading_ledger(store_url) as ledger:
        try:
            view = open_payouts_view(ledger)
        except PayoutLedgerError as exc:
            _fail(_first_line(exc))
        try:
            run = run_projection(
                ledger,
                view=view,
                rebuild=rebuild,
                follow=follow,
                poll_interval=poll_interval,
                batch_size=batch_size,
            )
        except KeyboardInterrupt:  # --follow ends with Ctrl-C; committed batches stay
            raise typer.Exit(130) from None
        rows = view.count()
    Console().print(
        f"{'Rebuilt' if rebuild else 'Updated'} {ledger.settings.read_model_table}: "
        f"{run.events} events applied in {run.batches} batches; tracking at notification "
        f"{run.tracking_id}; {rows} payouts."
    )


class ExportWhat(StrEnum):
    EVENTS = "events"
    PAYOUTS = "payouts"


class ExportFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"


@app.command("export")
def export_command(
    what: Annotated[ExportWhat, typer.Option(help="Every event, or one row per payout.")] = (
        ExportWhat.EVENTS
    ),
    fmt: Annotated[ExportFormat, typer.Option("--format", help="JSON Lines or CSV.")] = (
        ExportFormat.JSONL
    ),
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")
    ] = None,
    page_size: PageSizeOption = 2000,
    progress: ProgressOption = True,
    store_url: StoreOption = None,
) -> None:
    """Export the log for auditors, as JSON Lines or CSV; exit 1 if an event cannot be read.

    Events that cannot be read or are ill-typed are exported with ``error``
    set (payouts: left out of the rows), and named on stderr.
    """
    export = export_events if what is ExportWhat.EVENTS else export_payouts
    errors: list[tuple[int | None, str]] = []
    target: Any = (
        output.open("w", encoding="utf-8", newline="") if output else nullcontext(sys.stdout)
    )
    with (
        _reading_ledger(store_url) as ledger,
        _progress(ledger, "export", progress and output is not None) as on_page,
        target as out,
    ):
        count = export(
            ledger,
            cast(TextIO, out),
            fmt="csv" if fmt is ExportFormat.CSV else "jsonl",
            page_size=page_size,
            on_page=on_page,
            on_error=lambda nid, error: errors.append((nid, error)),
        )
    if output is not None:
        Console(stderr=True).print(f"Wrote {count} {what.value} to {output}.")
    if errors:
        nid, error = errors[0]
        _fail(
            f"{len(errors)} event(s) could not be read; first: "
            f"{'a row without a notification id' if nid is None else f'notification {nid}'}: "
            f"{error}",
            code=1,
        )


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

"""The operator's command line: ``payout-ledger``. Nothing imports this module.

Every command but ``demo`` reads its settings from ``PAYOUT_LEDGER_*``
environment variables (``--store-url`` overrides ``PAYOUT_LEDGER_STORE_URL``)
and opens an *existing* store: it never creates a file, a schema or the events
table (``project`` creates only its own read-model tables).

Exit codes, the same for every command:

- ``0``: done, nothing found.
- ``1``: findings: ``audit`` violations, ``verify`` problems, ``reconcile``
  mismatches or a ``--service`` the ledger has no payout for, ``export``
  events that cannot be read, ``project`` events the read model cannot hold,
  ``resume`` payouts still in flight, or the
  ledger refusing to act on what it read (``seal`` over a damaged seal chain).
- ``2``: usage or configuration: a bad option or argument (``--since`` not
  before ``--until``...), an invalid ``PAYOUT_LEDGER_*`` setting (named, with
  the reason, never its value), a store URL that can name no existing store
  (``memory://``, an SQLite file in a folder that does not exist), settings
  the ledger refuses (no Stripe key for ``resume`` or ``reconcile``, a wrong
  ``cipher_key``...), a Stripe key Stripe refuses (401, 403), an ``--output``
  that cannot be written.
- ``3``: the store or Stripe cannot be reached or opened: connection refused
  or timed out (after ``postgres_connect_timeout``), authentication failed, no
  such database, schema, events table or SQLite file, a file that is no SQLite
  database, a database error while running, Stripe not answering
  (``reconcile``), a payout too busy to claim (``LedgerBusyError``).
- ``130``: interrupted (Ctrl-C).

A command that cannot run (2, 3) prints one line on stderr, ``error: `` and the
cause, with the store URL's password replaced by ``***``, and nothing on
stdout. Findings (1) are the command's report on stdout; ``audit``, ``verify``,
``export``, ``resume`` and ``reconcile`` (without ``--json``) also sum them up in
one ``error:`` line on stderr.

Output: tables on a terminal wide enough for them; otherwise (piped, cron
mail, CI logs, a narrow terminal) plain aligned text, one line per row, as
wide as it needs. Amounts (integers, minor units) and ids are never cut.

JSON shapes (``--json``; amounts are integers in minor units; timestamps are
ISO 8601 strings):

- ``audit``: ``{"ok", "events", "last_notification_id", "payouts",
  "events_by_type": {event type: count}, "currencies": [{"currency", "payouts",
  "released", "released_amount", "reversed_amount", "in_flight",
  "in_flight_amount", "failed", "captured", "captured_amount", "net_amount"}],
  "providers": [{"provider_id", "currency", "payouts", "released",
  "released_amount", "reversed_amount", "in_flight", "net_amount"}],
  "in_flight": [{"event_service_id", "payout_id", "attempt", "amount",
  "currency", "started_notification_id"}], "violations": [{"kind",
  "notification_id", "payout_id", "originator_version", "event_type",
  "event_service_id", "detail"}]}``
- ``verify``: ``{"ok", "events", "aggregates", "chained_events",
  "legacy_events", "v1_links", "last_notification_id", "log_digest", "seals",
  "latest_seal": seal or null, "unsealed_events", "anchors_found": [digest],
  "problems": [{"kind", "notification_id", "originator_id",
  "originator_version", "topic", "detail"}]}``
- ``seal``: ``{"seal_number", "through_notification_id", "event_count",
  "log_digest", "seal_digest", "sealed_at"}``
- ``reconcile``: ``{"payouts_checked", "transfers_checked", "ok",
  "mismatches": [{"kind", "event_service_id", "transfer_id", "ledger",
  "stripe"}], "unknown_services": [event service id]}``; ``ok`` is false when
  there is a mismatch or an unknown service.
- ``export`` writes JSON Lines or CSV (see the audit documentation).
"""

from __future__ import annotations

import functools
import json
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NamedTuple, NoReturn, ParamSpec, TextIO, TypeVar, cast

import psycopg
import typer
from eventsourcing.persistence import PersistenceError
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from payout_ledger import __version__
from payout_ledger.audit import (
    audit_ledger,
    export_events,
    export_payouts,
    last_notification_id,
    verify_ledger,
)
from payout_ledger.demo import run_demo
from payout_ledger.errors import (
    ConfigurationError,
    GatewayError,
    InvalidRequestError,
    LedgerBusyError,
    PayoutLedgerError,
    StoreError,
    StoreNotFoundError,
)
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

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 findings (violations, tampering, mismatches, unreadable "
    "events, payouts still in flight); 2 usage or configuration; 3 the store or "
    "Stripe cannot be reached or opened; 130 interrupted."
)

app = typer.Typer(
    help="Release marketplace payments through Stripe Connect, exactly once.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    # Plain usage errors and help: rich's boxes cut messages to the terminal's width.
    rich_markup_mode=None,
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


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"payout-ledger {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Print the installed version and exit.",
        ),
    ] = False,
) -> None:
    """Release marketplace payments through Stripe Connect, exactly once."""


# Output: never cut an amount or an id.


def _stdout() -> Console:
    return Console(soft_wrap=True)


def _stderr() -> Console:
    return Console(stderr=True, soft_wrap=True)


class _Column(NamedTuple):
    header: str
    numeric: bool = False
    wrap: bool = False
    """Free text that may wrap on a terminal; ids, amounts and counts never do."""


Cell = str | Text


def _print_table(
    console: Console,
    title: str,
    columns: Sequence[_Column],
    rows: Sequence[Sequence[Cell]],
    *,
    title_style: str = "italic",
) -> None:
    """A table on a terminal it fits; otherwise plain aligned lines, as wide as needed."""
    cells = [[c if isinstance(c, Text) else Text(c) for c in row] for row in rows]
    if console.is_terminal:
        table = Table(title=Text(title, style=title_style), title_justify="left")
        for column in columns:
            table.add_column(
                column.header,
                justify="right" if column.numeric else "left",
                no_wrap=not column.wrap,
                overflow="fold",
            )
        for row in cells:
            table.add_row(*row)
        if _table_width(columns, cells) <= console.width:
            console.print(table)
            return
    console.print(Text(title, style=title_style))
    header = [Text(column.header, style="bold") for column in columns]
    lines = [
        header,
        *[[Text(" ".join(c.plain.split()), style=c.style) for c in row] for row in cells],
    ]
    widths = [max(cell_len(line[i].plain) for line in lines) for i in range(len(columns))]
    for line in lines:
        out = Text()
        for i, (cell, column) in enumerate(zip(line, columns, strict=True)):
            pad = " " * (widths[i] - cell_len(cell.plain))
            last = i == len(columns) - 1
            out.append_text(Text(pad) + cell if column.numeric else cell + ("" if last else pad))
            if not last:
                out.append("  ")
        console.print(out, soft_wrap=True, crop=False)


def _table_width(columns: Sequence[_Column], rows: Sequence[Sequence[Text]]) -> int:
    """The narrowest the table can be without cutting a cell of a column that does not wrap.

    Rich's own measure takes any cell to be wrappable at its spaces, and when a
    table is too wide it narrows every column; so this is computed here: whole
    cells for columns that do not wrap, the longest word for those that do,
    plus one space of padding on each side of a cell and a border between cells.
    """
    total = 3 * len(columns) + 1
    for i, column in enumerate(columns):
        texts = [column.header, *(row[i].plain for row in rows)]
        if column.wrap:
            total += max((cell_len(word) for text in texts for word in text.split()), default=1)
        else:
            total += max(cell_len(line) for text in texts for line in text.splitlines() or [""])
    return total


def _n(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


# Failing: one line, and an exit code that says whether the command could run.


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    _stderr().print(Text.assemble(("error:", "red"), " ", message), crop=False)
    raise typer.Exit(code)


def _first_line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return text or type(exc).__name__


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


P = ParamSpec("P")
R = TypeVar("R")


def _exit_codes(command: Callable[P, R]) -> Callable[P, R]:
    """Turn what stops a command into one line on stderr and its documented exit code."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except StoreError as exc:
            _fail(_first_line(exc), EXIT_UNAVAILABLE)
        except GatewayError as exc:
            # Stripe answered 401/403: the key is wrong, a configuration error.
            refused = exc.http_status in (401, 403)
            _fail(f"Stripe: {_first_line(exc)}", EXIT_USAGE if refused else EXIT_UNAVAILABLE)
        except LedgerBusyError as exc:
            _fail(_first_line(exc), EXIT_UNAVAILABLE)
        except (PersistenceError, psycopg.Error, sqlite3.Error) as exc:
            _fail(f"store: {_first_line(_root_cause(exc))}", EXIT_UNAVAILABLE)
        except (ConfigurationError, InvalidRequestError) as exc:
            _fail(f"configuration: {_first_line(exc)}", EXIT_USAGE)
        except PayoutLedgerError as exc:
            _fail(_first_line(exc), EXIT_FINDINGS)

    return run


def _settings_problem(exc: Exception, *, store_url_given: bool) -> str:
    """Which settings are wrong and why, without their values (a value may be a secret)."""
    cause = exc if isinstance(exc, ValidationError) else exc.__cause__
    if not isinstance(cause, ValidationError):
        return _first_line(exc)
    problems = []
    for error in cause.errors(include_url=False, include_input=False, include_context=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        if not field:
            problems.append(message)
            continue
        name = (
            "--store-url"
            if field == "store_url" and store_url_given
            else f"PAYOUT_LEDGER_{field.upper()}"
        )
        problems.append(f"{name}: {message}")
    return "; ".join(problems) or _first_line(exc)


def _settings(store_url: str | None) -> LedgerSettings:
    try:
        overrides = {"store_url": store_url} if store_url else {}
        return LedgerSettings(**overrides)  # type: ignore[arg-type]
    except (ValidationError, SettingsError, PayoutLedgerError) as exc:
        _fail(
            f"configuration: {_settings_problem(exc, store_url_given=bool(store_url))}",
            EXIT_USAGE,
        )


def _operator_ledger(store_url: str | None, *, calls_stripe: bool = True) -> PayoutLedger:
    """A ledger on the existing store named by PAYOUT_LEDGER_* variables (or --store-url).

    ``calls_stripe=False``: for commands that only read (and seal); its gateway
    refuses every call.
    """
    settings = _settings(store_url)
    try:
        gateway: TransferGateway | None = None
        if settings.stripe_enabled:
            gateway = (
                StripeTransferGateway.from_settings(settings) if calls_stripe else _NoTransfers()
            )
        return PayoutLedger(
            settings=settings, providers=_NoProviders(), gateway=gateway, must_exist=True
        )
    except StoreNotFoundError as exc:
        hint = ""
        if "store_url" not in settings.model_fields_set:
            hint = (
                f" (PAYOUT_LEDGER_STORE_URL is not set: the default {settings.store_url} was used)"
            )
        _fail(f"{_first_line(exc)}{hint}", EXIT_UNAVAILABLE)


class _NoProviders:
    """Operator commands settle recorded payouts; they never look providers up."""

    def get_provider(self, provider_id: str) -> ServiceProvider | None:
        return None


StoreOption = Annotated[
    str | None,
    typer.Option("--store-url", help="Overrides PAYOUT_LEDGER_STORE_URL."),
]


@app.command(epilog=EXIT_CODES_HELP)
@_exit_codes
def demo(
    db: Annotated[
        Path | None,
        typer.Option(help="SQLite file to write (recreated). Default: a temporary file."),
    ] = None,
) -> None:
    """Release a few event services on an SQLite file and show what happened."""
    console = _stdout()
    database = db or Path(tempfile.gettempdir()) / "payout-ledger-demo.db"
    report = run_demo(database)

    rows: list[list[Cell]] = []
    previous = None
    for step in report.steps:
        r = step.result
        rows.append(
            [
                step.scenario if step.scenario != previous else "",
                step.caller,
                r.event_service_id,
                Text(r.outcome.value, style=_STYLE[r.outcome]),
                r.transfer_id or "-",
            ]
        )
        previous = step.scenario
    _print_table(
        console,
        "Releases",
        [_Column(c) for c in ("scenario", "caller", "service", "outcome", "transfer")],
        rows,
    )
    _print_table(
        console,
        f"Event history of {report.history_of}",
        [
            _Column("v", numeric=True),
            _Column("event"),
            _Column("at (UTC)"),
            _Column("recorded", wrap=True),
        ],
        [
            [
                str(event.originator_version),
                type(event).__name__,
                event.timestamp.strftime("%H:%M:%S.%f")[:-3],
                _describe(event),
            ]
            for event in report.history
        ],
    )
    console.print(
        f"Stripe was called {_n(report.gateway_calls, 'time')} and made "
        f"{_n(report.transfers, 'transfer')} for 3 event services "
        f"({_n(len(report.steps), 'release call')}). Events are in {report.database}."
    )


@app.command(epilog=EXIT_CODES_HELP)
@_exit_codes
def resume(store_url: StoreOption = None) -> None:
    """Settle every payout left in flight; exit 1 if any is still unsettled."""
    with _operator_ledger(store_url) as ledger:
        results = ledger.resume_in_flight()
    console = _stdout()
    if not results:
        console.print("Nothing in flight.")
        return
    rows: list[list[Cell]] = []
    for r in results:
        how = r.detail or r.error_code or ""
        if r.error_code == "cannot_resume":
            how = f"cannot resume: {r.error_message}"
        rows.append(
            [
                r.event_service_id,
                Text(r.outcome.value, style=_STYLE[r.outcome]),
                str(r.attempt),
                r.transfer_id or "-",
                how,
            ]
        )
    _print_table(
        console,
        f"Resumed {_n(len(results), 'payout')} that {'was' if len(results) == 1 else 'were'} "
        "in flight",
        [
            _Column("service"),
            _Column("outcome"),
            _Column("attempt", numeric=True),
            _Column("transfer"),
            _Column("how", wrap=True),
        ],
        rows,
    )
    unsettled = sum(1 for r in results if r.in_flight)
    if unsettled:
        _fail(f"{_n(unsettled, 'payout')} still in flight", EXIT_FINDINGS)


@app.command("reconcile", epilog=EXIT_CODES_HELP)
@_exit_codes
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
    """Compare the ledger with Stripe's transfers; exit 1 on any mismatch or unknown service."""
    if service and (since or until):
        _fail("give --service or a --since/--until window, not both")
    start, end = _utc(since), _utc(until)
    if start is not None and end is not None and start >= end:
        _fail(f"--since ({start.isoformat()}) must be before --until ({end.isoformat()})")
    with _operator_ledger(store_url) as ledger:
        report = reconcile(ledger, event_service_ids=service or None, since=start, until=end)
        unknown = [
            s
            for s in dict.fromkeys(service or [])
            if ledger.find_payout(s) is None
            and not any(m.event_service_id == s for m in report.mismatches)
        ]
    ok = report.ok and not unknown
    if as_json:
        typer.echo(
            json.dumps(
                {**report.as_dict(), "ok": ok, "unknown_services": unknown}, indent=2, default=str
            )
        )
    else:
        console = _stdout()
        console.print(
            f"{_n(report.payouts_checked, 'payout')}, "
            f"{_n(report.transfers_checked, 'transfer')}: "
            f"{_n(len(report.mismatches), 'mismatch', 'mismatches')}."
        )
        if report.mismatches:
            _print_table(
                console,
                "Mismatches",
                [
                    _Column("kind"),
                    _Column("service"),
                    _Column("transfer"),
                    _Column("ledger", wrap=True),
                    _Column("stripe", wrap=True),
                ],
                [
                    [
                        m.kind.value,
                        m.event_service_id or "-",
                        m.transfer_id or "-",
                        str(m.ledger),
                        str(m.stripe),
                    ]
                    for m in report.mismatches
                ],
                title_style="red",
            )
    if not ok and as_json:  # stdout is the JSON document; nothing else is printed
        raise typer.Exit(EXIT_FINDINGS)
    if unknown:
        _fail(
            f"no payout recorded for {', '.join(unknown)}: not in the ledger, and Stripe "
            f"lists no transfer of {'it' if len(unknown) == 1 else 'them'}",
            EXIT_FINDINGS,
        )
    if not ok:
        _fail(_n(len(report.mismatches), "mismatch", "mismatches"), EXIT_FINDINGS)


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


@app.command("audit", epilog=EXIT_CODES_HELP)
@_exit_codes
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
            f"{_n(len(report.violations), 'violation')}; first: {first.kind.value} at "
            f"notification {first.notification_id} ({first.event_type} "
            f"v{first.originator_version} of payout {first.payout_id}): {first.detail}",
            EXIT_FINDINGS,
        )


def _print_audit(report: Any) -> None:
    console = _stdout()
    console.print(
        f"Audited {_n(report.events, 'event')} (through notification "
        f"{report.last_notification_id}): {_n(report.payouts, 'payout')}, "
        f"{len(report.in_flight)} in flight, {_n(len(report.violations), 'violation')}."
    )
    if report.currencies:
        _print_table(
            console,
            "Per currency (minor units)",
            [_Column("currency")]
            + [
                _Column(name, numeric=True)
                for name in (
                    "payouts",
                    "released",
                    "released amount",
                    "reversed",
                    "net",
                    "in flight",
                    "in flight amount",
                    "failed",
                    "captured amount",
                )
            ],
            [
                [
                    c.currency,
                    str(c.payouts),
                    str(c.released),
                    str(c.released_amount),
                    str(c.reversed_amount),
                    str(c.net_amount),
                    str(c.in_flight),
                    str(c.in_flight_amount),
                    str(c.failed),
                    str(c.captured_amount),
                ]
                for c in report.currencies
            ],
        )
    if report.providers:
        _print_table(
            console,
            "Per provider (minor units)",
            [_Column("provider"), _Column("currency")]
            + [
                _Column(name, numeric=True)
                for name in (
                    "payouts",
                    "released",
                    "released amount",
                    "reversed",
                    "net",
                    "in flight",
                )
            ],
            [
                [
                    p.provider_id,
                    p.currency,
                    str(p.payouts),
                    str(p.released),
                    str(p.released_amount),
                    str(p.reversed_amount),
                    str(p.net_amount),
                    str(p.in_flight),
                ]
                for p in report.providers
            ],
        )
    if report.in_flight:
        _print_table(
            console,
            "In flight (no outcome recorded yet)",
            [
                _Column("service"),
                _Column("attempt", numeric=True),
                _Column("amount", numeric=True),
                _Column("currency"),
                _Column("since notification", numeric=True),
            ],
            [
                [
                    f.event_service_id,
                    str(f.attempt),
                    str(f.amount),
                    f.currency,
                    str(f.started_notification_id),
                ]
                for f in report.in_flight[:_SHOWN]
            ],
        )
        if len(report.in_flight) > _SHOWN:
            console.print(f"... and {len(report.in_flight) - _SHOWN} more (--json lists all)")
    if report.violations:
        _print_table(
            console,
            "Violations",
            [
                _Column("rule"),
                _Column("notification", numeric=True),
                _Column("event"),
                _Column("service"),
                _Column("payout"),
                _Column("detail", wrap=True),
            ],
            [
                [
                    Text(v.kind.value, style="red"),
                    str(v.notification_id),
                    f"{v.event_type} v{v.originator_version}",
                    v.event_service_id or "-",
                    v.payout_id,
                    v.detail,
                ]
                for v in report.violations
            ],
            title_style="red",
        )


_SHOWN = 50


@app.command("verify", epilog=EXIT_CODES_HELP)
@_exit_codes
def verify_command(
    anchor: Annotated[
        list[str] | None,
        typer.Option(help="A seal digest kept outside the database (repeatable)."),
    ] = None,
    anchor_file: Annotated[
        Path | None,
        typer.Option(
            help="A file of anchored seal digests, one per line.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
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
        try:
            lines = anchor_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            _fail(f"cannot read --anchor-file {anchor_file}: {_first_line(exc)}")
        anchors += [line.split()[0] for line in lines if line.strip()]
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
            f"{_n(len(report.problems), 'problem')}; first: {first.kind.value} at {where}: "
            f"{first.detail}",
            EXIT_FINDINGS,
        )


def _print_verify(report: Any) -> None:
    console = _stdout()
    console.print(
        f"Verified {_n(report.events, 'event')} of {_n(report.aggregates, 'aggregate')}: "
        f"{report.chained_events} chained, {report.legacy_events} legacy (unchained), "
        f"{_n(report.seals, 'seal')}, {_n(report.unsealed_events, 'event')} after the "
        "latest seal."
    )
    console.print(f"Log digest now: {report.log_digest}")
    if report.latest_seal is not None:
        seal = report.latest_seal
        console.print(
            f"Latest seal #{seal.seal_number} through notification "
            f"{seal.through_notification_id} ({_n(seal.event_count, 'event')}), "
            f"sealed {seal.sealed_at.isoformat()}; anchor this outside the database:"
        )
        console.print(Text(seal.seal_digest, style="bold"))
    else:
        console.print("[yellow]The log has never been sealed: run `payout-ledger seal`.[/]")
    for found in report.anchors_found:
        console.print(Text.assemble(("anchor found", "green"), f" {found}"))
    if report.problems:
        _print_table(
            console,
            "Problems",
            [
                _Column("kind"),
                _Column("notification", numeric=True),
                _Column("aggregate"),
                _Column("version", numeric=True),
                _Column("detail", wrap=True),
            ],
            [
                [
                    Text(p.kind.value, style="red"),
                    str(p.notification_id or "-"),
                    p.originator_id or "-",
                    str(p.originator_version or "-"),
                    p.detail,
                ]
                for p in report.problems
            ],
            title_style="red",
        )
    else:
        console.print("[green]No tampering found.[/]")


@app.command("seal", epilog=EXIT_CODES_HELP)
@_exit_codes
def seal_command(
    as_json: JsonOption = False,
    digest_only: Annotated[
        bool,
        typer.Option(
            "--digest-only", help="Print only the seal digest (to append to an anchors file)."
        ),
    ] = False,
    store_url: StoreOption = None,
) -> None:
    """Seal the log so far (count and rolling digest); print the digest to anchor."""
    with _reading_ledger(store_url) as ledger:
        info = ledger.seal()
    if digest_only:
        typer.echo(info.seal_digest)
        return
    if as_json:
        typer.echo(json.dumps(info.as_dict(), indent=2))
        return
    console = _stdout()
    console.print(
        f"Seal #{info.seal_number}: {_n(info.event_count, 'event')} through notification "
        f"{info.through_notification_id}, log digest {info.log_digest}."
    )
    console.print("Anchor this seal digest outside the database:")
    console.print(Text(info.seal_digest, style="bold"))


@app.command("project", epilog=EXIT_CODES_HELP)
@_exit_codes
def project_command(
    rebuild: Annotated[
        bool, typer.Option(help="Empty the payouts table and replay the log into it.")
    ] = False,
    follow: Annotated[bool, typer.Option(help="Keep polling for new events.")] = False,
    poll_interval: Annotated[float, typer.Option(min=0.05, help="Seconds between polls.")] = 1.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Events per transaction.")] = 1000,
    store_url: StoreOption = None,
) -> None:
    """Bring the payouts read model up to date (exactly once, resumable).

    The events must exist; the read model's own tables are created if missing.
    """
    with _reading_ledger(store_url) as ledger:
        view = open_payouts_view(ledger)
        run = run_projection(  # --follow ends with Ctrl-C (exit 130); committed batches stay
            ledger,
            view=view,
            rebuild=rebuild,
            follow=follow,
            poll_interval=poll_interval,
            batch_size=batch_size,
        )
        rows = view.count()
    _stdout().print(
        f"{'Rebuilt' if rebuild else 'Updated'} {ledger.settings.read_model_table}: "
        f"{_n(run.events, 'event')} applied in {_n(run.batches, 'batch', 'batches')}; "
        f"tracking at notification {run.tracking_id}; {_n(rows, 'payout')}."
    )
    if run.skipped:
        _fail(
            f"{_n(run.skipped, 'event')} the read model cannot hold (each logged with its "
            "notification id) left out; run payout-ledger verify",
            EXIT_FINDINGS,
        )


class ExportWhat(StrEnum):
    EVENTS = "events"
    PAYOUTS = "payouts"


class ExportFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"


@app.command("export", epilog=EXIT_CODES_HELP)
@_exit_codes
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
    set (payouts: left out of the rows), and named on stderr. The output file
    is opened only once the store is open.
    """
    export = export_events if what is ExportWhat.EVENTS else export_payouts
    errors: list[tuple[int | None, str]] = []
    with _reading_ledger(store_url) as ledger:
        try:
            target = output.open("w", encoding="utf-8", newline="") if output is not None else None
        except OSError as exc:
            _fail(f"cannot write {output}: {exc.strerror or _first_line(exc)}")
        try:
            with _progress(ledger, "export", progress and output is not None) as on_page:
                count = export(
                    ledger,
                    cast(TextIO, target or sys.stdout),
                    fmt="csv" if fmt is ExportFormat.CSV else "jsonl",
                    page_size=page_size,
                    on_page=on_page,
                    on_error=lambda nid, error: errors.append((nid, error)),
                )
        except OSError as exc:
            if target is None:
                raise
            _fail(f"cannot write {output}: {exc.strerror or _first_line(exc)}")
        finally:
            if target is not None:
                target.close()
    if output is not None:
        noun = what.value.removesuffix("s")
        _stderr().print(f"Wrote {_n(count, noun)} to {output}.", markup=False)
    if errors:
        nid, error = errors[0]
        _fail(
            f"{_n(len(errors), 'event')} could not be read; first: "
            f"{'a row without a notification id' if nid is None else f'notification {nid}'}: "
            f"{error}",
            EXIT_FINDINGS,
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

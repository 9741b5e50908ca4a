"""The operator's commands: ``demo``, ``resume``, ``reconcile`` and ``sync-account``.

``resume``, ``reconcile`` and ``sync-account`` open the existing store and call
Stripe; ``demo`` writes its own SQLite file and calls a stand-in for Stripe.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from payout_ledger.cli.demo import run_demo
from payout_ledger.cli.opening import StoreOption, operator_ledger
from payout_ledger.cli.output import Cell, Column, counted, print_table, stdout_console
from payout_ledger.cli.root import EXIT_CODES_HELP, EXIT_FINDINGS, app, exit_codes, fail
from payout_ledger.domain.payout import PayoutAggregate
from payout_ledger.service.reconcile import reconcile
from payout_ledger.service.requests import ReleaseOutcome

_STYLE = {
    ReleaseOutcome.RELEASED: "bold green",
    ReleaseOutcome.ALREADY_RELEASED: "green",
    ReleaseOutcome.IN_PROGRESS: "yellow",
    ReleaseOutcome.ONBOARDING_REQUIRED: "magenta",
    ReleaseOutcome.PROVIDER_ACTION_REQUIRED: "magenta",
    ReleaseOutcome.FAILED: "red",
    ReleaseOutcome.OUTCOME_UNKNOWN: "bold red",
    ReleaseOutcome.NOT_EXECUTED: "yellow",
}


@app.command(epilog=EXIT_CODES_HELP)
@exit_codes
def demo(
    db: Annotated[
        Path | None,
        typer.Option(help="SQLite file to write (recreated). Default: a temporary file."),
    ] = None,
) -> None:
    """Release a few event services on an SQLite file and show what happened."""
    console = stdout_console()
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
    print_table(
        console,
        "Releases",
        [Column(c) for c in ("scenario", "caller", "service", "outcome", "transfer")],
        rows,
    )
    print_table(
        console,
        f"Event history of {report.history_of}",
        [
            Column("v", numeric=True),
            Column("event"),
            Column("at (UTC)"),
            Column("recorded", wrap=True),
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
        f"Stripe was called {counted(report.gateway_calls, 'time')} and made "
        f"{counted(report.transfers, 'transfer')} for 3 event services "
        f"({counted(len(report.steps), 'release call')}). Events are in {report.database}."
    )


@app.command(epilog=EXIT_CODES_HELP)
@exit_codes
def resume(store_url: StoreOption = None) -> None:
    """Settle every payout and reversal left in flight; exit 1 if any is still unsettled."""
    # Imported here: ``reverse`` registers after this module's commands in --help.
    from payout_ledger.cli.reversing import print_reversals, unsettled_reversals

    with operator_ledger(store_url) as ledger:
        results = ledger.resume_in_flight()
        reversals = ledger.resume_reversals_in_flight()
    console = stdout_console()
    if not results and not reversals:
        console.print("Nothing in flight.")
        return
    if reversals:
        print_reversals(
            f"Resumed {counted(len(reversals), 'reversal')} that "
            f"{'was' if len(reversals) == 1 else 'were'} in flight",
            reversals,
        )
    still_reversing = unsettled_reversals(reversals)
    if not results:
        if still_reversing:
            fail(f"{still_reversing} still in flight", EXIT_FINDINGS)
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
    print_table(
        console,
        f"Resumed {counted(len(results), 'payout')} that {'was' if len(results) == 1 else 'were'} "
        "in flight",
        [
            Column("service"),
            Column("outcome"),
            Column("attempt", numeric=True),
            Column("transfer"),
            Column("how", wrap=True),
        ],
        rows,
    )
    unsettled = sum(1 for r in results if r.in_flight)
    if unsettled or still_reversing:
        still = [counted(unsettled, "payout")] if unsettled else []
        fail(f"{' and '.join([*still, *filter(None, [still_reversing])])} still in flight",
             EXIT_FINDINGS)  # fmt: skip


@app.command("sync-account", epilog=EXIT_CODES_HELP)
@exit_codes
def sync_account_command(
    account_id: Annotated[str, typer.Argument(help="The connected account, acct_...")],
    store_url: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Ask Stripe for a connected account's payability and record it; exit 1 if unpayable."""
    with operator_ledger(store_url) as ledger:
        payability = ledger.sync_account(account_id)
    if as_json:
        shown = {
            "account_id": payability.account_id,
            "payable": payability.payable,
            "reason": payability.reason,
            "message": payability.message,
            "payouts_enabled": payability.payouts_enabled,
            "transfers": payability.transfers,
            "disabled_reason": payability.disabled_reason,
            "source": payability.source.value,
            "reported_at": payability.reported_at.isoformat(),
        }
        typer.echo(json.dumps(shown, indent=2))
    else:
        state = "payable" if payability.payable else f"NOT payable: {payability.message}"
        enabled = {True: "yes", False: "no", None: "not reported"}[payability.payouts_enabled]
        stdout_console().print(
            Text(f"{payability.account_id}: {state} (payouts enabled: {enabled})")
        )
    if not payability.payable and not as_json:
        fail(f"{payability.account_id} cannot be paid ({payability.reason})", EXIT_FINDINGS)
    if not payability.payable:
        raise typer.Exit(EXIT_FINDINGS)


@app.command("reconcile", epilog=EXIT_CODES_HELP)
@exit_codes
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
        fail("give --service or a --since/--until window, not both")
    start, end = _utc(since), _utc(until)
    if start is not None and end is not None and start >= end:
        fail(f"--since ({start.isoformat()}) must be before --until ({end.isoformat()})")
    with operator_ledger(store_url) as ledger:
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
        console = stdout_console()
        console.print(
            f"{counted(report.payouts_checked, 'payout')}, "
            f"{counted(report.transfers_checked, 'transfer')}: "
            f"{counted(len(report.mismatches), 'mismatch', 'mismatches')}."
        )
        if report.mismatches:
            print_table(
                console,
                "Mismatches",
                [
                    Column("kind"),
                    Column("service"),
                    Column("transfer"),
                    Column("ledger", wrap=True),
                    Column("stripe", wrap=True),
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
        for m in report.reversals_in_flight:  # not mismatches: resume settles them
            console.print(
                f"reversal in flight: {m.event_service_id} ({m.transfer_id}): ledger {m.ledger}, "
                f"Stripe reversed {m.stripe}; run payout-ledger resume"
            )
    if not ok and as_json:  # stdout is the JSON document; nothing else is printed
        raise typer.Exit(EXIT_FINDINGS)
    if unknown:
        fail(
            f"no payout recorded for {', '.join(unknown)}: not in the ledger, and Stripe "
            f"lists no transfer of {'it' if len(unknown) == 1 else 'them'}",
            EXIT_FINDINGS,
        )
    if not ok:
        fail(counted(len(report.mismatches), "mismatch", "mismatches"), EXIT_FINDINGS)


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

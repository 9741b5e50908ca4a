"""How ``audit`` and ``verify`` print their reports (without ``--json``)."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from payout_ledger.cli.output import Column, counted, print_table, stdout_console

_SHOWN = 50


def print_audit(report: Any) -> None:
    console = stdout_console()
    console.print(
        f"Audited {counted(report.events, 'event')} (through notification "
        f"{report.last_notification_id}): {counted(report.payouts, 'payout')}, "
        f"{len(report.in_flight)} in flight, {counted(len(report.violations), 'violation')}."
    )
    if report.checkpoint:
        console.print(f"Checkpoint: {report.checkpoint}.")
    if report.currencies:
        print_table(
            console,
            "Per currency (minor units)",
            [Column("currency")]
            + [
                Column(name, numeric=True)
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
        print_table(
            console,
            "Per provider (minor units)",
            [Column("provider"), Column("currency")]
            + [
                Column(name, numeric=True)
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
        print_table(
            console,
            "In flight (no outcome recorded yet)",
            [
                Column("service"),
                Column("attempt", numeric=True),
                Column("amount", numeric=True),
                Column("currency"),
                Column("since notification", numeric=True),
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
        print_table(
            console,
            "Violations",
            [
                Column("rule"),
                Column("notification", numeric=True),
                Column("event"),
                Column("service"),
                Column("payout"),
                Column("detail", wrap=True),
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


def print_verify(report: Any) -> None:
    console = stdout_console()
    console.print(
        f"Verified {counted(report.events, 'event')} of {counted(report.aggregates, 'aggregate')}: "
        f"{report.chained_events} chained, {report.legacy_events} legacy (unchained), "
        f"{counted(report.seals, 'seal')}, {counted(report.unsealed_events, 'event')} after the "
        "latest seal."
    )
    console.print(f"Log digest now: {report.log_digest}")
    if report.processes == 2:
        console.print("Read in two processes, split at a seal.")
    if report.checkpoint:
        console.print(f"Checkpoint: {report.checkpoint}.")
    if report.latest_seal is not None:
        seal = report.latest_seal
        console.print(
            f"Latest seal #{seal.seal_number} through notification "
            f"{seal.through_notification_id} ({counted(seal.event_count, 'event')}), "
            f"sealed {seal.sealed_at.isoformat()}; anchor this outside the database:"
        )
        console.print(Text(seal.seal_digest, style="bold"))
    else:
        console.print("[yellow]The log has never been sealed: run `payout-ledger seal`.[/]")
    for found in report.anchors_found:
        console.print(Text.assemble(("anchor found", "green"), f" {found}"))
    if report.problems:
        print_table(
            console,
            "Problems",
            [
                Column("kind"),
                Column("notification", numeric=True),
                Column("aggregate"),
                Column("version", numeric=True),
                Column("detail", wrap=True),
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

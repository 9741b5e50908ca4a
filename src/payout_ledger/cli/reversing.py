"""The ``reverse`` command, and how reversal results are printed (``reverse``, ``resume``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated

import typer
from rich.text import Text

from payout_ledger.cli.opening import StoreOption, operator_ledger
from payout_ledger.cli.output import Cell, Column, counted, print_table, stdout_console
from payout_ledger.cli.root import EXIT_CODES_HELP, EXIT_FINDINGS, app, exit_codes, fail
from payout_ledger.service.requests import ReversalOutcome, ReversalResult

STYLE = {
    ReversalOutcome.REVERSED: "bold green",
    ReversalOutcome.ALREADY_REVERSED: "green",
    ReversalOutcome.IN_PROGRESS: "yellow",
    ReversalOutcome.FAILED: "red",
    ReversalOutcome.OUTCOME_UNKNOWN: "bold red",
    ReversalOutcome.NOT_EXECUTED: "yellow",
}


@app.command(epilog=EXIT_CODES_HELP)
@exit_codes
def reverse(
    event_service_id: Annotated[str, typer.Argument(help="The event service whose transfer.")],
    amount: Annotated[
        int | None,
        typer.Option(help="Minor units to reverse. Default: all that is not yet reversed."),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            help="The host's id of the refund; a partial reversal needs one (a retry with "
            "the same reference is the same reversal)."
        ),
    ] = None,
    reason: Annotated[
        str, typer.Option(help="Kept in the ledger and the reversal's metadata.")
    ] = "requested_by_customer",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    store_url: StoreOption = None,
) -> None:
    """Reverse a paid transfer (in whole or in part), once; exit 1 unless it is reversed."""
    with operator_ledger(store_url) as ledger:
        result = ledger.reverse_payment(
            event_service_id, amount, reason=reason, reference=reference
        )
    if as_json:
        typer.echo(json.dumps(result.model_dump(mode="json"), indent=2))
        if not result.success:  # stdout is the JSON document; nothing else is printed
            raise typer.Exit(EXIT_FINDINGS)
        return
    print_reversals(f"Reversal of {result.event_service_id}", [result])
    if not result.success:
        fail(_why_not(result), EXIT_FINDINGS)


def print_reversals(title: str, results: Sequence[ReversalResult]) -> None:
    """One row per reversal result."""
    rows: list[list[Cell]] = []
    for r in results:
        how = r.detail or ""
        if r.error_code:
            how = f"{r.error_code}: {r.error_message or ''}".strip()
        rows.append(
            [
                r.event_service_id,
                Text(r.outcome.value, style=STYLE[r.outcome]),
                r.reference or "-",
                str(r.amount),
                r.currency,
                str(r.attempt) if r.attempt is not None else "-",
                r.reversal_id or "-",
                str(r.amount_reversed),
                how,
            ]
        )
    print_table(
        stdout_console(),
        title,
        [
            Column("service"),
            Column("outcome"),
            Column("reference"),
            Column("amount", numeric=True),
            Column("currency"),
            Column("attempt", numeric=True),
            Column("reversal"),
            Column("reversed in all", numeric=True),
            Column("how", wrap=True),
        ],
        rows,
    )


def _why_not(result: ReversalResult) -> str:
    if result.in_flight:
        return (
            f"the reversal of {result.event_service_id} is in flight ({result.outcome.value}): "
            "run payout-ledger resume"
        )
    if result.outcome is ReversalOutcome.IN_PROGRESS:
        return f"not reversed: {result.detail or 'another reversal is in flight'}"
    return f"not reversed: {result.error_code or result.outcome.value}"


def unsettled_reversals(results: Sequence[ReversalResult]) -> str | None:
    """How many reversals are still in flight, as words (None: none)."""
    count = sum(1 for r in results if r.in_flight)
    return counted(count, "reversal") if count else None

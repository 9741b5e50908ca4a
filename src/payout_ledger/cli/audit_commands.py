"""The audit commands: ``audit``, ``verify``, ``seal``, ``project`` and ``export``.

They read the log and never call Stripe; ``seal`` appends a seal and ``project``
writes its read model.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TextIO, cast

import typer
from rich.console import Console
from rich.text import Text

from payout_ledger.adapters.projection import open_payouts_view, run_projection
from payout_ledger.audit import (
    audit_ledger,
    export_events,
    export_payouts,
    last_notification_id,
    verify_ledger,
)
from payout_ledger.cli.opening import StoreOption, reading_ledger
from payout_ledger.cli.output import counted, stderr_console, stdout_console
from payout_ledger.cli.reports import print_audit, print_verify
from payout_ledger.cli.root import EXIT_CODES_HELP, EXIT_FINDINGS, app, exit_codes, fail, first_line
from payout_ledger.service.ledger import PayoutLedger

_PROGRESS_FROM = 20_000
"""Show a progress bar when the log has at least this many events (and stdout is a terminal)."""


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
CheckpointOption = Annotated[
    Path | None,
    typer.Option(
        help="A checkpoint file: continue from it, reading only the newer events, and write "
        "it anew. Missing or damaged: a full run, said so. Keep it where the database's "
        "writers cannot write; with PAYOUT_LEDGER_CHECKPOINT_KEY set, its digest is keyed "
        "and a file rewritten without the key is refused.",
        dir_okay=False,
    ),
]
FullOption = Annotated[
    bool, typer.Option("--full", help="Read the whole log, whatever the checkpoint holds.")
]


@app.command("audit", epilog=EXIT_CODES_HELP)
@exit_codes
def audit_command(
    as_json: JsonOption = False,
    page_size: PageSizeOption = 2000,
    progress: ProgressOption = True,
    checkpoint: CheckpointOption = None,
    full: FullOption = False,
    store_url: StoreOption = None,
) -> None:
    """Replay every payout from the log and check the money rules; exit 1 on a violation."""
    with reading_ledger(store_url) as ledger, _progress(ledger, "audit", progress) as on_page:
        try:
            report = audit_ledger(
                ledger, page_size=page_size, on_page=on_page, checkpoint=checkpoint, full=full
            )
        except OSError as exc:
            fail(f"cannot write --checkpoint {checkpoint}: {first_line(exc)}")
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        print_audit(report)
    if not report.ok:
        first = report.violations[0]
        fail(
            f"{counted(len(report.violations), 'violation')}; first: {first.kind.value} at "
            f"notification {first.notification_id} ({first.event_type} "
            f"v{first.originator_version} of payout {first.payout_id}): {first.detail}",
            EXIT_FINDINGS,
        )


@app.command("verify", epilog=EXIT_CODES_HELP)
@exit_codes
def verify_command(
    anchor: Annotated[
        list[str] | None,
        typer.Option(help="A seal digest kept outside the database (repeatable)."),
    ] = None,
    anchor_file: Annotated[
        Path | None,
        typer.Option(
            help="A file of anchored seal digests, one per line: a digest, or a JSON "
            "object with seal_digest (as payout-ledger worker writes them).",
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
    checkpoint: CheckpointOption = None,
    full: FullOption = False,
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            max=2,
            help="2: a full run reads the log in two processes, split at a seal (about "
            "twice as fast with two free cores; the same report).",
        ),
    ] = 1,
    store_url: StoreOption = None,
) -> None:
    """Recompute every hash chain and seal; exit 1 if the log was tampered with."""
    anchors = list(anchor or [])
    if anchor_file is not None:
        try:
            lines = anchor_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read --anchor-file {anchor_file}: {first_line(exc)}")
        anchors += [_anchored_digest(line) for line in lines if line.strip()]
    with reading_ledger(store_url) as ledger, _progress(ledger, "verify", progress) as on_page:
        try:
            report = verify_ledger(
                ledger,
                anchors=anchors,
                strict=strict,
                page_size=page_size,
                on_page=on_page,
                checkpoint=checkpoint,
                full=full,
                processes=processes,
            )
        except OSError as exc:
            fail(f"cannot write --checkpoint {checkpoint}: {first_line(exc)}")
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        print_verify(report)
    if not report.ok:
        first = report.problems[0]
        where = f"notification {first.notification_id}" if first.notification_id else "the log"
        fail(
            f"{counted(len(report.problems), 'problem')}; first: {first.kind.value} at {where}: "
            f"{first.detail}",
            EXIT_FINDINGS,
        )


def _anchored_digest(line: str) -> str:
    """A line of an anchors file: a digest (and anything after it), or a JSON object."""
    if not line.lstrip().startswith("{"):
        return line.split()[0]
    try:
        digest = json.loads(line).get("seal_digest")
    except (ValueError, AttributeError):
        digest = None
    if not isinstance(digest, str) or not digest.strip():
        fail("--anchor-file: a JSON line without a seal_digest string")
    return digest


@app.command("seal", epilog=EXIT_CODES_HELP)
@exit_codes
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
    with reading_ledger(store_url) as ledger:
        info = ledger.seal()
    if digest_only:
        typer.echo(info.seal_digest)
        return
    if as_json:
        typer.echo(json.dumps(info.as_dict(), indent=2))
        return
    console = stdout_console()
    console.print(
        f"Seal #{info.seal_number}: {counted(info.event_count, 'event')} through notification "
        f"{info.through_notification_id}, log digest {info.log_digest}."
    )
    console.print("Anchor this seal digest outside the database:")
    console.print(Text(info.seal_digest, style="bold"))


@app.command("project", epilog=EXIT_CODES_HELP)
@exit_codes
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
    with reading_ledger(store_url) as ledger:
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
    stdout_console().print(
        f"{'Rebuilt' if rebuild else 'Updated'} {ledger.settings.read_model_table}: "
        f"{counted(run.events, 'event')} applied in {counted(run.batches, 'batch', 'batches')}; "
        f"tracking at notification {run.tracking_id}; {counted(rows, 'payout')}."
    )
    if run.skipped:
        fail(
            f"{counted(run.skipped, 'event')} the read model cannot hold (each logged with its "
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
@exit_codes
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
    with reading_ledger(store_url) as ledger:
        try:
            target = output.open("w", encoding="utf-8", newline="") if output is not None else None
        except OSError as exc:
            fail(f"cannot write {output}: {exc.strerror or first_line(exc)}")
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
            fail(f"cannot write {output}: {exc.strerror or first_line(exc)}")
        finally:
            if target is not None:
                target.close()
    if output is not None:
        noun = what.value.removesuffix("s")
        stderr_console().print(f"Wrote {counted(count, noun)} to {output}.", markup=False)
    if errors:
        nid, error = errors[0]
        fail(
            f"{counted(len(errors), 'event')} could not be read; first: "
            f"{'a row without a notification id' if nid is None else f'notification {nid}'}: "
            f"{error}",
            EXIT_FINDINGS,
        )

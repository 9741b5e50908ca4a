"""``release-many``: a batch of releases from a file, under the store-shared rate budget.

The file (JSON Lines or CSV, ``-`` for stdin) names, for each release, the event
service, the provider and where its money goes: the provider's user id and
connected account (``provider_user_id``, ``stripe_account_id``), since the command
has no access to the host's provider directory. A provider named twice must be
named the same way each time. Every row is checked before anything is recorded:
one bad row refuses the whole file (exit 2), with its line number.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from payout_ledger.cli.opening import StoreOption, operator_ledger
from payout_ledger.cli.output import (
    Cell,
    Column,
    counted,
    print_table,
    stderr_console,
    stdout_console,
)
from payout_ledger.cli.root import EXIT_CODES_HELP, EXIT_FINDINGS, EXIT_USAGE, app, exit_codes, fail
from payout_ledger.errors import BulkRequestError, InvalidRequestError
from payout_ledger.service.bulk import BulkItemResult, BulkReleaseReport
from payout_ledger.service.ports import ServiceProvider

MAX_ROWS_SHOWN = 100
"""Items not released listed on stdout (all of them with ``--json``)."""
PLAIN_PROGRESS_SECONDS = 10.0
"""Off a terminal, a progress line at most this often (and at each tenth of the batch)."""

_PROVIDER_FIELDS = ("provider_user_id", "stripe_account_id")
_CSV_FIELDS = ("event_service_id", "provider_id", *_PROVIDER_FIELDS, "amount", "currency")
_CSV_OPTIONAL = ("description", "transfer_group", "source_transaction")


@app.command("release-many", epilog=EXIT_CODES_HELP)
@exit_codes
def release_many_command(
    file: Annotated[
        str,
        typer.Argument(help="JSON Lines or CSV of releases; - reads stdin.", show_default=False),
    ],
    store_url: StoreOption = None,
    file_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="jsonl, csv, or auto (by the file's extension; stdin: by its first character).",
        ),
    ] = "auto",
    concurrency: Annotated[
        int, typer.Option(min=1, max=64, help="Releases at once in this process.")
    ] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Release every payment in FILE, under the shared Stripe rate budget; exit 1 if any
    is not released.

    Each row: event_service_id, provider_id, provider_user_id, stripe_account_id,
    amount (integer, minor units) and currency (in JSON Lines the amount may be
    {"amount": ..., "currency": ...}); optional description, transfer_group,
    source_transaction. Running the same file again pays nobody twice.
    """
    text = _read(file)
    fmt = _format(file, text, file_format)
    rows = list(_json_rows(text) if fmt == "jsonl" else _csv_rows(text))
    requests, providers, lines = _batch(rows)
    if not requests:
        fail("the file holds no releases", EXIT_USAGE)
    with (
        operator_ledger(store_url, providers=_Directory(providers)) as ledger,
        _progress(len(requests)) as advance,
    ):
        try:
            report = ledger.release_many(requests, concurrency=concurrency, on_result=advance)
        except BulkRequestError as exc:
            fail(_bad_items(exc, lines), EXIT_USAGE)
    _print(report, lines, as_json)
    missing = sum(1 for item in report.items if not item.success)
    if missing:
        fail(f"{missing} of {len(report.items)} not released", EXIT_FINDINGS)


# Reading the file.


def _read(file: str) -> str:
    try:
        if file == "-":
            return sys.stdin.read()
        return Path(file).read_text(encoding="utf-8-sig")  # a spreadsheet's BOM too
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {file}: {type(exc).__name__}: {exc}".splitlines()[0], EXIT_USAGE)


def _format(file: str, text: str, given: str) -> str:
    if given not in ("auto", "jsonl", "csv"):
        fail("--format is jsonl, csv or auto", EXIT_USAGE)
    if given != "auto":
        return given
    if file != "-":
        return "csv" if file.lower().endswith(".csv") else "jsonl"
    return "jsonl" if text.lstrip()[:1] == "{" else "csv"


def _json_rows(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, row or why it is not one), skipping blank lines."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, f"not JSON ({exc.msg})"
            continue
        if not isinstance(value, dict):
            yield number, "not a JSON object"
            continue
        if "currency" in value and not isinstance(value.get("amount"), dict):
            value["amount"] = {"amount": value.get("amount"), "currency": value.pop("currency")}
        yield number, value


def _csv_rows(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [name for name in _CSV_FIELDS if name not in header]
    unknown = [name for name in header if name not in (*_CSV_FIELDS, *_CSV_OPTIONAL)]
    if missing or unknown:
        problems = [f"missing column(s) {', '.join(missing)}"] if missing else []
        problems += [f"unknown column(s) {', '.join(unknown)}"] if unknown else []
        fail(f"line 1: {'; '.join(problems)}; nothing released", EXIT_USAGE)
    for row in reader:
        number = reader.line_num
        if None in row or any(value is None for value in row.values()):
            yield number, "not as many cells as columns"
            continue
        amount = row.pop("amount").strip()
        if not amount.isascii() or not amount.isdigit():
            yield number, "amount is an integer number of minor units"
            continue
        value: dict[str, Any] = {k: v for k, v in row.items() if v != "" or k in _CSV_FIELDS}
        value["amount"] = {"amount": int(amount), "currency": value.pop("currency")}
        yield number, value


def _batch(
    rows: list[tuple[int, dict[str, Any] | str]],
) -> tuple[list[dict[str, Any]], dict[str, ServiceProvider], list[int]]:
    """The release requests, the providers they name, and each request's line number;
    exit 2 naming the bad lines (nothing released)."""
    requests: list[dict[str, Any]] = []
    providers: dict[str, ServiceProvider] = {}
    lines: list[int] = []
    problems: list[str] = []
    for number, row in rows:
        if isinstance(row, str):
            problems.append(f"line {number}: {row}")
            continue
        try:
            provider = ServiceProvider(
                id=row.get("provider_id"),
                user_id=row.pop("provider_user_id", None),
                stripe_account_id=row.pop("stripe_account_id", None),
            )
        except InvalidRequestError as exc:
            problems.append(f"line {number}: {exc}")
            continue
        known = providers.setdefault(provider.id, provider)
        if known != provider:
            problems.append(
                f"line {number}: provider {provider.id!r} is named with another user or "
                "connected account than on an earlier line"
            )
            continue
        requests.append(row)
        lines.append(number)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        fail(f"{'; '.join(problems[:5])}{more}; nothing released", EXIT_USAGE)
    return requests, providers, lines


def _bad_items(exc: BulkRequestError, lines: list[int]) -> str:
    shown = "; ".join(f"line {lines[i]}: {reason}" for i, reason in exc.problems[:5])
    more = f" (and {len(exc.problems) - 5} more)" if len(exc.problems) > 5 else ""
    return f"{shown}{more}; nothing released"


class _Directory:
    """The providers the file names (the command has no access to the host's)."""

    def __init__(self, providers: dict[str, ServiceProvider]) -> None:
        self._providers = providers

    def get_provider(self, provider_id: str) -> ServiceProvider | None:
        return self._providers.get(provider_id)


# Progress and the report.


class _progress:  # noqa: N801 - a context manager used like a function
    """A rich progress bar on a terminal (stderr); plain lines otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.console = stderr_console()
        self.done = 0
        self.released = 0
        self._bar: Progress | None = None
        self._task: Any = None
        self._last_line = time.monotonic()
        self._next_tenth = 1

    def __enter__(self) -> Any:
        if self.console.is_terminal:
            self._bar = Progress(
                TextColumn("releasing"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[released]} released"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("release", total=self.total, released=0)
        return self.advance

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, item: BulkItemResult) -> None:
        self.done += 1
        self.released += item.success
        if self._bar is not None:
            self._bar.update(self._task, advance=1, released=self.released)
            return
        now = time.monotonic()
        tenth = self.done * 10 // self.total
        if tenth >= self._next_tenth or now - self._last_line >= PLAIN_PROGRESS_SECONDS:
            self._next_tenth = tenth + 1
            self._last_line = now
            self.console.print(
                f"release-many: {self.done}/{self.total} done, {self.released} released",
                highlight=False,
                crop=False,
            )


def _print(report: BulkReleaseReport, lines: list[int], as_json: bool) -> None:
    not_released = [item for item in report.items if not item.success]
    if as_json:
        summary = report.summary()
        summary["not_released"] = [
            {
                "line": lines[item.index],
                "event_service_id": item.event_service_id,
                "outcome": item.outcome,
                "error_code": _code(item),
                "error_message": _message(item),
            }
            for item in not_released
        ]
        typer.echo(json.dumps(summary))
        return
    console = stdout_console()
    governor = report.governor or {}
    print_table(
        console,
        f"Released {counted(report.summary()['released'], 'payment')} of "
        f"{len(report.items)} in {report.seconds:.1f} s "
        f"({int(governor.get('tokens', 0))} Stripe requests, "
        f"{int(governor.get('rate_limited', 0))} answered 429)",
        [Column("outcome"), Column("items", numeric=True)],
        [[outcome, str(n)] for outcome, n in sorted(report.counts.items())],
    )
    if not not_released:
        return
    rows: list[list[Cell]] = [
        [
            str(lines[item.index]),
            item.event_service_id,
            Text(item.outcome, style="red"),
            _message(item) or _code(item) or "",
        ]
        for item in not_released[:MAX_ROWS_SHOWN]
    ]
    more = len(not_released) - MAX_ROWS_SHOWN
    print_table(
        console,
        "Not released" + (f" (the first {MAX_ROWS_SHOWN}; {more} more)" if more > 0 else ""),
        [
            Column("line", numeric=True),
            Column("service"),
            Column("outcome"),
            Column("why", wrap=True),
        ],
        rows,
    )


def _code(item: BulkItemResult) -> str | None:
    if item.result is not None:
        return item.result.error_code
    return type(item.error).__name__ if item.error is not None else None


def _message(item: BulkItemResult) -> str | None:
    if item.result is not None:
        return item.result.error_message or item.result.detail
    return str(item.error).splitlines()[0] if item.error is not None else None

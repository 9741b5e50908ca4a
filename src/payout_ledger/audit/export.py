"""Export for auditors: every event, or every payout, as JSON Lines or CSV.

Events are streamed in notification order, one page at a time, each with its
digest and ``previous_hash`` so the auditor can re-check the chains with their
own tools. A payout's events share its ``originator_id`` (the uuid5 of the
event service id); ``PayoutStarted`` names the event service.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TextIO

from payout_ledger.adapters.log import (
    DEFAULT_PAGE_SIZE,
    PageCallback,
    hidden_rows,
    iter_notifications,
)
from payout_ledger.adapters.mapper import chained_mapper, read_notification
from payout_ledger.audit.replay import PayoutSummary, ViolationKind, audit_ledger
from payout_ledger.domain.chain import canonical_json
from payout_ledger.domain.typecheck import type_check

if TYPE_CHECKING:
    from payout_ledger.service.ledger import PayoutLedger

__all__ = [
    "EVENT_COLUMNS",
    "PAYOUT_COLUMNS",
    "ErrorCallback",
    "ExportFormat",
    "export_events",
    "export_payouts",
]

ExportFormat = Literal["jsonl", "csv"]

EVENT_COLUMNS = (
    "notification_id",
    "originator_id",
    "originator_version",
    "event_type",
    "topic",
    "timestamp",
    "event_service_id",
    "attempt",
    "amount",
    "currency",
    "transfer_id",
    "amount_reversed",
    "previous_hash",
    "digest",
    "error",
    "fields",
    "reversal_attempt",
    "reference",
    "reversal_id",
    "reversed_before",
)
"""CSV columns of the events export; ``fields`` holds every field as canonical JSON.
The platform reversals' columns (``reversal_attempt``...) come after ``fields``,
so the earlier columns keep their places."""

PAYOUT_COLUMNS = (
    "event_service_id",
    "payout_id",
    "provider_id",
    "status",
    "amount",
    "currency",
    "attempts",
    "transfer_id",
    "amount_reversed",
    "version",
    "reversal_attempts",
    "reversal_status",
)
"""Columns of the payouts export (the platform reversals' last)."""

_ENVELOPE = frozenset({"originator_id", "originator_version", "timestamp", "previous_hash"})
_FLAT = (
    "event_service_id",
    "attempt",
    "amount",
    "currency",
    "transfer_id",
    "amount_reversed",
    "reversal_attempt",
    "reference",
    "reversal_id",
    "reversed_before",
)


ErrorCallback = Callable[[int | None, str], None]
"""Called with (notification id, error) for each event exported with an error."""


def _event_rows(
    ledger: PayoutLedger, page_size: int, on_page: PageCallback | None
) -> Iterator[dict[str, Any]]:
    mapper = chained_mapper(ledger)
    for n in iter_notifications(ledger, page_size=page_size, on_page=on_page):
        read = read_notification(mapper, n)
        row: dict[str, Any] = {
            "notification_id": n.id,
            "originator_id": str(n.originator_id),
            "originator_version": n.originator_version,
            "event_type": n.topic.rsplit(":", 1)[-1],
            "topic": n.topic,
            "digest": read.digest,
        }
        event = read.event
        if event is None:
            row["error"] = f"undecodable: {read.error}"
            yield row
            continue
        state = vars(event)
        why = type_check(type(event))(state)
        if why is not None:
            row["error"] = f"ill-typed: {why}"
        fields = {k: v for k, v in state.items() if k not in _ENVELOPE and not k.startswith("_")}
        timestamp, previous_hash = state.get("timestamp"), state.get("previous_hash")
        row["timestamp"] = timestamp.isoformat() if isinstance(timestamp, datetime) else None
        row["previous_hash"] = previous_hash if isinstance(previous_hash, str) else None
        row["fields"] = json.loads(canonical_json(fields))
        yield row


def _reporting(rows: Iterable[dict[str, Any]], on_error: ErrorCallback) -> Iterator[dict[str, Any]]:
    for row in rows:
        if row.get("error"):
            on_error(row["notification_id"], row["error"])
        yield row


def export_events(
    ledger: PayoutLedger,
    out: TextIO,
    *,
    fmt: ExportFormat = "jsonl",
    page_size: int = DEFAULT_PAGE_SIZE,
    on_page: PageCallback | None = None,
    on_error: ErrorCallback | None = None,
) -> int:
    """Write every stored event to ``out``; returns how many were written.

    An event that cannot be read, or whose fields do not have their declared
    types, is written with ``error`` set (``undecodable: ...``,
    ``ill-typed: ...``) and reported to ``on_error``.
    """
    rows: Iterable[dict[str, Any]] = _event_rows(ledger, page_size, on_page)
    if on_error is not None:
        rows = _reporting(rows, on_error)
    if fmt != "jsonl":
        rows = map(_flattened, rows)
    written = _write(out, fmt, rows, EVENT_COLUMNS)
    if on_error is not None:
        for row_id, version, topic in hidden_rows(ledger):
            on_error(
                None,
                f"hidden_row: {topic} v{version} of {row_id} has no notification id and "
                "is not exported",
            )
    return written


def _flattened(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV event row: the common fields in columns, all of them as JSON in ``fields``."""
    fields = row.get("fields") or {}
    flat = {k: fields.get(k) for k in _FLAT}
    encoded = json.dumps(fields, ensure_ascii=False, sort_keys=True) if fields else ""
    return {**row, **flat, "fields": encoded}


def export_payouts(
    ledger: PayoutLedger,
    out: TextIO,
    *,
    fmt: ExportFormat = "jsonl",
    page_size: int = DEFAULT_PAGE_SIZE,
    on_page: PageCallback | None = None,
    on_error: ErrorCallback | None = None,
) -> int:
    """Write one row per payout, replayed from the log as the audit sees it.

    Events the audit cannot fold (undecodable or ill-typed) are left out of
    the rows and reported to ``on_error``.
    """
    kept: dict[int, PayoutSummary] = {}
    report = audit_ledger(ledger, page_size=page_size, on_page=on_page, keep_summaries=kept.update)
    if on_error is not None:
        for v in report.violations:
            if v.kind in (
                ViolationKind.UNDECODABLE,
                ViolationKind.ILL_TYPED,
                ViolationKind.HIDDEN_ROW,
            ):
                on_error(v.notification_id, f"{v.kind.value}: {v.detail}")
    return _write(out, fmt, (summary.as_dict() for summary in kept.values()), PAYOUT_COLUMNS)


def _write(
    out: TextIO, fmt: ExportFormat, rows: Iterable[dict[str, Any]], columns: Sequence[str]
) -> int:
    """Rows as JSON Lines, or as CSV with ``columns``; returns how many were written."""
    count = 0
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
        return count
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
        count += 1
    return count

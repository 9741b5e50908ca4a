"""Export for auditors: every event, or every payout, as JSON Lines or CSV.

Events are streamed in notification order, one page at a time, each with its
digest and ``previous_hash`` so the auditor can re-check the chains with their
own tools. A payout's events share its ``originator_id`` (the uuid5 of the
event service id); ``PayoutStarted`` names the event service.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TextIO

from payout_ledger.audit.replay import PayoutSummary, audit_ledger
from payout_ledger.audit.seal import notification_digest
from payout_ledger.audit.stream import DEFAULT_PAGE_SIZE, PageCallback, iter_notifications
from payout_ledger.chain import canonical_json

if TYPE_CHECKING:
    from payout_ledger.ledger import PayoutLedger

__all__ = ["EVENT_COLUMNS", "PAYOUT_COLUMNS", "ExportFormat", "export_events", "export_payouts"]

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
)
"""CSV columns of the events export; ``fields`` holds every field as canonical JSON."""

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
)
"""Columns of the payouts export."""

_ENVELOPE = frozenset({"originator_id", "originator_version", "timestamp", "previous_hash"})
_FLAT = ("event_service_id", "attempt", "amount", "currency", "transfer_id", "amount_reversed")


def _event_rows(
    ledger: PayoutLedger, page_size: int, on_page: PageCallback | None
) -> Iterator[dict[str, Any]]:
    for n in iter_notifications(ledger, page_size=page_size, on_page=on_page):
        digest, event, error = notification_digest(ledger.mapper, n)
        row: dict[str, Any] = {
            "notification_id": n.id,
            "originator_id": str(n.originator_id),
            "originator_version": n.originator_version,
            "event_type": n.topic.rsplit(":", 1)[-1],
            "topic": n.topic,
            "digest": digest,
        }
        if event is None:
            row["error"] = str(error)
            yield row
            continue
        state = vars(event)
        fields = {k: v for k, v in state.items() if k not in _ENVELOPE and not k.startswith("_")}
        row["timestamp"] = event.timestamp.isoformat()
        row["previous_hash"] = event.previous_hash
        row["fields"] = json.loads(canonical_json(fields))
        yield row


def export_events(
    ledger: PayoutLedger,
    out: TextIO,
    *,
    fmt: ExportFormat = "jsonl",
    page_size: int = DEFAULT_PAGE_SIZE,
    on_page: PageCallback | None = None,
) -> int:
    """Write every stored event to ``out``; returns how many were written."""
    rows: Iterable[dict[str, Any]] = _event_rows(ledger, page_size, on_page)
    if fmt != "jsonl":
        rows = map(_flattened, rows)
    return _write(out, fmt, rows, EVENT_COLUMNS)


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
) -> int:
    """Write one row per payout, replayed from the log as the audit sees it."""
    kept: dict[int, PayoutSummary] = {}
    audit_ledger(ledger, page_size=page_size, on_page=on_page, keep_summaries=kept.update)
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

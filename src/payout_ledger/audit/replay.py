"""The audit: replay every payout from the log and check the money rules.

[`audit_ledger`][payout_ledger.audit.audit_ledger] reads the log once, in
notification order, a page at a time. It keeps a compact summary per payout
(never the events) and checks, for every event as it arrives:

| rule | violation |
|---|---|
| at most one successful transfer per event service | ``double_transfer`` |
| every transfer id belongs to one payout | ``transfer_id_reused`` |
| ``Released`` only after the payout's own ``TransferSucceeded`` | ``release_without_transfer`` |
| reversals never exceed the amount transferred | ``reversal_exceeds_amount`` |
| a reversal names the payout's transfer | ``reversal_without_transfer`` |
| an attempt is concluded before the next one starts | ``attempt_without_outcome`` |
| an outcome concludes the attempt in flight | ``outcome_without_attempt`` |
| every stored event can be read | ``undecodable`` |
| every field the audit folds has its declared type | ``ill_typed`` |
| a later attempt keeps the payout's amount, currency and provider | ``attempt_terms_changed`` |
| a transfer has its attempt's amount, currency and destination | ``transfer_unlike_claim`` |
| every stored event has a topic of the ledger's own events | ``undecodable`` |
| every row has a notification id (PostgreSQL) | ``hidden_row`` |
| a real store (Stripe enabled) records no simulated transfer | ``simulated_in_real_store`` |
| a simulated store records no real transfer | ``real_in_simulated_store`` |
| ``ReversalStarted`` only on a paid payout, naming its transfer | ``reversal_without_transfer`` |
| one reversal attempt in flight at a time | ``reversal_without_outcome`` |
| reversal attempts numbered 1, 2, 3... | ``reversal_out_of_sequence`` |
| a reversal attempt's key is ``reverse_payment.attempt{N}:{service}`` | ``reversal_key_mismatch`` |
| a reversal claims a positive amount in the payout's currency | ``reversal_unlike_payout`` |
| a reversal claims no more than is not yet reversed | ``reversal_exceeds_amount`` |
| ``reversed_before`` is what was reversed; | ``reversal_amounts_inconsistent`` |
| ``amount_reversed >= reversed_before + amount`` | ``reversal_amounts_inconsistent`` |
| a reversal outcome concludes the attempt in flight | ``reversal_outcome_without_attempt`` |
| ... with its claim's reference, key and amount | ``reversal_unlike_claim`` |

A payout whose last attempt has no outcome yet is not a violation: it is
reported as in flight, and so is a reversal attempt without an outcome.
Totals are given per currency and per provider.

The rules themselves are in ``payout_ledger.audit.rules``, the totals in
``payout_ledger.audit.totals`` and the report's types in ``payout_ledger.audit.report``.
"""

from __future__ import annotations

import heapq
import json
import os
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, replace
from itertools import chain, compress, count, islice
from operator import attrgetter, itemgetter, le
from typing import TYPE_CHECKING, Any, Literal, cast
from uuid import UUID

from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import get_topic

from payout_ledger.adapters import telemetry
from payout_ledger.adapters.log import (
    DEFAULT_PAGE_SIZE,
    ILL_TYPED_ROW,
    PageCallback,
    RawEvent,
    StateDecoder,
    aggregate_rows,
    hidden_rows,
    iter_notifications,
    iter_states,
    last_notification_id,
)
from payout_ledger.adapters.mapper import chained_mapper
from payout_ledger.audit.checkpoint import (
    Checkpoint,
    CheckpointRefusedError,
    Parts,
    check_binding,
    checkpoint_key_of,
    decode_value,
    encode_value,
    restore_from,
    save_checkpoint,
    seal_binding,
    store_identity,
)
from payout_ledger.audit.report import (
    AuditReport,
    CurrencyTotals,
    InFlightPayout,
    InFlightReversal,
    InFlightRows,
    PayoutSummary,
    ProviderTotals,
    ReversalSummary,
    Violation,
    ViolationKind,
)
from payout_ledger.audit.rules import FOLDED, Auditor, TransferIds
from payout_ledger.audit.stored import (
    LEDGER_EVENT_CLASSES,
    OrdinaryEvents,
    SeenFilter,
    filter_bits,
    restored_filter,
    saved_filter,
)
from payout_ledger.audit.totals import (
    Totals,
    add_totals,
    fold_payout,
    merged,
    new_totals,
    reversal_row,
    uuid_text,
)
from payout_ledger.audit.verify_report import VerifyReport
from payout_ledger.audit.verify_seals import read_seals
from payout_ledger.domain.payout import PayoutAggregate
from payout_ledger.domain.store_mode import StoreModeRecord
from payout_ledger.domain.stripe_events import CapturedPayment

if TYPE_CHECKING:
    from payout_ledger.service.ledger import PayoutLedger

__all__ = [
    "AuditReport",
    "CurrencyTotals",
    "InFlightPayout",
    "InFlightReversal",
    "InFlightRows",
    "PayoutSummary",
    "ProviderTotals",
    "ReversalSummary",
    "Violation",
    "ViolationKind",
    "audit_ledger",
]


Decode = Literal["states", "mapper"]
"""How the audit decodes events; see [`audit_ledger`][payout_ledger.audit.audit_ledger]."""


SUMMARIES_LIMIT = 50_000
"""Payout summaries the audit keeps at most; settled ones beyond it are folded into the totals."""


@telemetry.traced(
    "payout_ledger.audit",
    lambda report: {
        "events": report.events,
        "payouts": report.payouts,
        "violations": len(report.violations),
        "ok": report.ok,
    },
)
def audit_ledger(
    ledger: PayoutLedger,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    on_page: PageCallback | None = None,
    keep_summaries: Callable[[dict[int, PayoutSummary]], None] | None = None,
    decode: Decode = "states",
    summaries_limit: int = SUMMARIES_LIMIT,
    checkpoint: str | os.PathLike[str] | None = None,
    full: bool = False,
    checkpoint_key: str | None = None,
) -> AuditReport:
    """Replay the whole log once and check every payout; see the module docs.

    ``on_page(last_id, count)`` is called after each page (for a progress bar).
    ``keep_summaries`` receives the per-payout summaries at the end, keyed by
    payout id as an int, each with its event service id (the payouts export
    uses it; it keeps every summary in memory). ``decode="states"`` (the
    default) folds each event's decoded, upcast state without building event
    objects (see [`iter_states`][payout_ledger.adapters.log.iter_states] for why);
    ``decode="mapper"`` builds every event with ``ledger.mapper.to_domain_event``.

    Memory is bounded: at most ``summaries_limit`` payout summaries are kept;
    beyond that, settled payouts are folded into the totals and let go, and a
    payout let go whose later event arrives (a reversal months after) is rebuilt
    from its earlier events in the log first. A payout in flight is always kept.
    Transfer ids are kept as 64-bit hashes; a hash seen for two payouts makes
    the audit read the log a second time, keeping those ids exactly (see
    [`TransferIds`][payout_ledger.audit.rules.TransferIds]).

    With ``checkpoint`` (a file path), the audit continues from the state that
    file holds and reads only the events after it, then writes the file anew at
    the end of the log; ``full=True`` reads the whole log whatever the file
    holds. A missing, damaged or refused file makes a full run; the report's
    ``checkpoint`` says which (see ``payout_ledger.audit.checkpoint``).
    ``checkpoint_key`` (default: the ledger's ``checkpoint_key`` setting) keys
    the file's digest, so that a file rewritten without the key is refused.
    """
    key = checkpoint_key_of(ledger, checkpoint_key)
    args = (ledger, page_size, on_page, keep_summaries, decode, summaries_limit)
    status, run, incremental = "", None, False
    if checkpoint is not None and keep_summaries is None:
        status, run = _restore(ledger, checkpoint, full, summaries_limit, key)
        if run is not None:
            try:
                run = _replay(*args, None, run)
            except CheckpointRefusedError as refused:  # a saved payout it took up
                status, run = f"refused: {refused}; the whole log was read", None
        if run is not None:
            incremental = True
            if run.transfers.suspects():
                status = (
                    f"{status}, then read the whole log: a transfer id was recorded twice "
                    "since the checkpoint"
                )
                run, incremental = None, False
    if run is None:
        run = _replay(*args, None)
        suspects = run.transfers.suspects()
        if suspects:
            run = _replay(*args, suspects)
    if checkpoint is not None and keep_summaries is None:
        run.evict(everything=True)
        save_checkpoint(checkpoint, run.checkpoint(), key)
    report = run.finish(keep_summaries)
    report.checkpoint = status
    report.incremental = incremental
    return report


def _restore(
    ledger: PayoutLedger, path: str | os.PathLike[str], full: bool, limit: int, key: bytes | None
) -> tuple[str, _Replay | None]:
    """Why the audit reads the whole log, or the pass restored from the checkpoint."""

    def use(saved: Checkpoint) -> _Replay:
        check_binding(saved, ledger, read_seals(ledger, chained_mapper(ledger), VerifyReport(), 1))
        return _Replay.restore(ledger, saved, limit)

    return restore_from(path, "audit", full, use, key)


class _Replay:
    """One audit pass: the ``Auditor``, the report so far, and the bounded summaries."""

    def __init__(
        self,
        ledger: PayoutLedger,
        auditor: Auditor,
        limit: int | None,
        seen: SeenFilter | None = None,
    ) -> None:
        self.ledger = ledger
        self.auditor = auditor
        self.transfers = auditor.transfers
        self.report = AuditReport()
        self.by_topic: dict[str, int] = {}
        self.limit = limit
        self.saved: list[bytes | None] = []
        """The open payouts of the checkpoint this pass started from, as it stored them
        (a JSON line each; None once an event touched it): first those in flight, in
        the order they started, then those open for a reversal only."""
        self.saved_index: dict[bytes, int] = {}
        """Where each untouched one is in ``saved``, by payout id (text)."""
        self.saved_since = array("q")
        """The notification id that started each saved payout in flight."""
        self.saved_reversals: list[InFlightReversal] = []
        """The report's rows of the reversals in flight there."""
        self.saved_totals = new_totals()
        """Their money (in flight, and anything reversed before)."""
        self.touched: set[str] = set()
        """Saved open payouts an event touched: kept as summaries from then on."""
        self.parked: dict[int, PayoutSummary] = {}
        """Open payouts moved out of the working set by an eviction (taken back by
        ``recall``): an eviction never reads them again, however many there are."""
        self.next_eviction = limit or 0
        """Evict when this many summaries are kept."""
        self.folded = new_totals()
        if seen is None and limit:
            seen = SeenFilter(filter_bits(last_notification_id(ledger)))
        self.seen = seen
        self.respelt: dict[int, list[RawEvent]] = {}
        """SQLite rows whose originator id is spelt otherwise than the store writes it,
        by payout id (the rebuild of a payout adds them: its query matches exact text)."""
        self.decode_state = StateDecoder(ledger).decode

    def recall(self, key: int, nid: int) -> None:
        """Before an event of payout ``key``, which is not kept: rebuild it if it was let go."""
        auditor = self.auditor
        parked = self.parked.pop(key, None)
        if parked is not None:
            auditor.payouts[key] = parked
            return
        if self.saved_index:
            payout_id = uuid_text(key)
            at = self.saved_index.pop(payout_id.encode("ascii"), None)
            if at is not None:  # open at the checkpoint: as it saved it
                line, self.saved[at] = self.saved[at], None
                kept = _saved_summary(line)
                fold_payout(kept, self.saved_totals, -1)
                self.touched.add(payout_id)
                auditor.payouts[key] = kept
                return
        assert self.seen is not None
        if not self.seen.add(key):
            return  # never seen: the event is the payout's first
        scratch = Auditor(keep_service_ids=auditor.keep_service_ids, transfers=_NO_TRANSFERS)
        scratch.simulated = auditor.simulated
        scratch.violations = _Discarded()
        folds = scratch.folds
        rows = aggregate_rows(self.ledger, UUID(int=key).hex, nid)
        extra = [row for row in self.respelt.get(key, ()) if row[0] < nid]
        if extra:
            rows = sorted([*rows, *extra])
        for row_nid, _, version, topic, stored in rows:
            fold = folds.get(topic)
            if fold is None:
                continue
            try:
                state = self.decode_state(topic, stored)
                if fold[0](state) is None:
                    fold[1](state, row_nid, key, version)
            except Exception:  # noqa: S112 - reported when the pass read it
                continue
        p = scratch.payouts.get(key)
        if p is not None:
            fold_payout(p, self.folded, -1)
            auditor.payouts[key] = p

    def evict(self, everything: bool = False) -> None:
        """Let the older half of the working set go (all of it: ``everything``).

        A settled payout is folded into the totals and dropped; an open one (in
        flight, or its reversal) is parked, whole. The next eviction comes after
        ``limit / 2`` more payouts, so its cost per payout stays bounded.
        """
        payouts, parked, folded = self.auditor.payouts, self.parked, self.folded
        goal = 0 if everything else len(payouts) // 2
        for key in list(islice(payouts, len(payouts) - goal)):
            p = payouts.pop(key)
            r = p.reversal
            if p.open_since is None and (r is None or r.since is None):
                fold_payout(p, folded)
            else:
                parked[key] = p
        if self.limit:
            self.next_eviction = len(payouts) + max(1, self.limit // 2)

    def open_payouts(self) -> Iterator[PayoutSummary]:
        """Every payout kept as a summary: parked, then in the working set."""
        yield from self.parked.values()
        yield from self.auditor.payouts.values()

    def finish(
        self, keep_summaries: Callable[[dict[int, PayoutSummary]], None] | None
    ) -> AuditReport:
        ledger, report, auditor = self.ledger, self.report, self.auditor
        for row_id, row_version, row_topic in hidden_rows(ledger):
            auditor.violations.append(
                Violation(
                    kind=ViolationKind.HIDDEN_ROW,
                    notification_id=None,
                    payout_id=row_id,
                    originator_version=row_version if type(row_version) is int else 0,
                    event_type=str(row_topic).rsplit(":", 1)[-1],
                    event_service_id=None,
                    detail="a stored row without a notification id: the audit cannot place "
                    "it, the ledger applies it",
                )
            )
        report.events_by_type = {t.rsplit(":", 1)[-1]: c for t, c in self.by_topic.items()}
        report.violations = [_named(ledger, v) for v in auditor.violations]
        report.payouts = auditor.created
        touched = self.touched
        report.in_flight = []
        report.reversals_in_flight = [r for r in self.saved_reversals if r.payout_id not in touched]
        payouts = auditor.payouts
        # Without a caller to keep them, each summary goes as its report row comes.
        kept: Iterable[PayoutSummary] = (
            payouts.values()  # then nothing was parked: a caller's audit is unbounded
            if keep_summaries is not None
            else chain(_drained(self.parked), _drained(payouts))
        )
        add_totals(report, kept, auditor.captured, merged(self.folded, self.saved_totals))
        report.reversals_in_flight = [
            r
            if r.event_service_id
            else replace(r, event_service_id=_service_named(ledger, r.payout_id))
            for r in report.reversals_in_flight
        ]
        saved = self.saved_in_flight()
        if saved:  # rows made when listed: merged, by start, with the live ones
            live = report.in_flight
            rows = _saved_rows(compress(self.saved, saved))
            report.in_flight = InFlightRows(
                len(live) + sum(saved), heapq.merge(rows, live, key=_started)
            )
        if keep_summaries is not None:
            keep_summaries(auditor.payouts)
        return report

    def saved_in_flight(self) -> list[bool]:
        """Which of the saved payouts in flight no event touched (the first in ``saved``)."""
        return [line is not None for line in islice(self.saved, len(self.saved_since))]

    def open_lines(self) -> tuple[Parts, array[int]]:
        """The blob of every open payout, one JSON line each (the untouched as saved, the
        others encoded as written: twice, never held), and the start of those in flight.

        Those in flight come first, in the order they started, then the others."""
        saved, since = self.saved, self.saved_since
        live = list(self.open_payouts())
        flying = ((p.open_since, p) for p in live if p.open_since is not None)
        old = compress(zip(since, islice(saved, len(since)), strict=True), self.saved_in_flight())
        merged_ = sorted(chain(old, flying), key=_first)
        starts = array("q", map(_first, merged_))
        order: list[bytes | PayoutSummary] = list(map(itemgetter(1), merged_))
        del merged_
        order += (line for line in islice(saved, len(since), None) if line is not None)
        order += (p for p in live if p.open_since is None)

        def encoded(item: bytes | PayoutSummary) -> bytes:
            return item if type(item) is bytes else _encoded(item)  # type: ignore[arg-type]

        def parts() -> Iterator[bytes]:
            for start in range(0, len(order), 10_000):
                yield b"\n".join(map(encoded, order[start : start + 10_000])) + b"\n"

        size = len(order) + sum(map(len, map(encoded, order)))
        return Parts(size, parts()), starts

    def checkpoint(self) -> Checkpoint:
        """The pass's state at the end of the log (after ``evict(everything=True)``)."""
        auditor, report, transfers = self.auditor, self.report, self.transfers
        seals = read_seals(self.ledger, chained_mapper(self.ledger), VerifyReport(), 1)
        open_totals = new_totals()
        for p in self.open_payouts():
            fold_payout(p, open_totals)
        body = {
            "events": report.events,
            "last_notification_id": report.last_notification_id,
            "by_topic": self.by_topic,
            "violations": [asdict(v) for v in auditor.violations],
            "created": auditor.created,
            "simulated": auditor.simulated,
            "captured": auditor.captured,
            "folded": _totals_state(self.folded),
            "open_fields": [*_SUMMARY, "reversal"],
            "open_totals": _totals_state(merged(self.saved_totals, open_totals)),
            "respelt": [
                [str(key), [[encode_value(v) for v in row] for row in rows]]
                for key, rows in self.respelt.items()
            ],
            "suspected": sorted(transfers.suspected),
            "exact": transfers.exact,
            **saved_filter(self.seen),
        }
        reversals = [asdict(r) for r in self.saved_reversals if r.payout_id not in self.touched]
        live = self.open_payouts
        for p in live():
            r = p.reversal
            if r is not None and r.since is not None:
                reversals.append(asdict(reversal_row(p, r)))
        body["reversals_in_flight"] = reversals
        open_lines, starts = self.open_lines()
        body["in_flight_lines"] = len(starts)
        blobs: dict[str, Any] = {"open": open_lines, "since": starts}
        counts = transfers.counts()
        blobs["hashes"] = Parts(8 * sum(counts), transfers.chunks())
        blobs["hash_counts"] = counts
        if self.seen is not None:
            blobs["seen"] = self.seen.bits
        return Checkpoint(
            kind="audit",
            store=store_identity(self.ledger),
            position=report.last_notification_id,
            seal=seal_binding(seals[-1] if seals else None),
            body=body,
            blobs=blobs,
        )

    @classmethod
    def restore(cls, ledger: PayoutLedger, saved: Checkpoint, limit: int) -> _Replay:
        body = saved.body
        try:
            transfers = TransferIds.restore(
                set(body["suspected"]),
                dict(body["exact"]),
                saved.blobs.pop("hashes"),
                saved.blobs.pop("hash_counts"),
            )
        except ValueError as exc:
            raise CheckpointRefusedError(f"{exc}: of another release") from None
        auditor = Auditor(keep_service_ids=False, transfers=transfers)
        auditor.created = body["created"]
        auditor.simulated = body["simulated"]
        auditor.captured = {k: list(v) for k, v in body["captured"].items()}
        auditor.violations = [
            Violation(**{**v, "kind": ViolationKind(v["kind"])}) for v in body["violations"]
        ]
        if body["open_fields"] != [*_SUMMARY, "reversal"] or "in_flight_lines" not in body:
            raise CheckpointRefusedError("its payouts are of another release's form")
        seen = restored_filter(body, saved.blobs.pop("seen")) if limit else None
        run = cls(ledger, auditor, limit, seen)
        run.by_topic = dict(body["by_topic"])
        run.report.events = body["events"]
        run.report.last_notification_id = body["last_notification_id"]
        run.folded = _totals_of(body["folded"])
        run.saved_totals = _totals_of(body["open_totals"])
        # The summaries stay as saved until an event touches one (``recall``), and the
        # report's rows of those in flight are made when it lists them.
        lines = _split(saved.blobs.pop("open"))
        run.saved, run.saved_index = cast("list[bytes | None]", lines), _index(lines)
        since = run.saved_since
        since.frombytes(saved.blobs.pop("since"))
        if len(since) != body["in_flight_lines"] or len(since) > len(lines):
            raise ValueError("its count of payouts in flight is not their lines'")
        if not all(map(le, since, islice(since, 1, None))):
            raise ValueError("its payouts in flight are not in the order they started")
        run.saved_reversals = [InFlightReversal(**r) for r in body["reversals_in_flight"]]
        run.respelt = {
            int(key): [tuple(decode_value(v) for v in row) for row in rows]
            for key, rows in body["respelt"]
        }
        if not limit:  # nothing is let go, so nothing is recalled: take them all now
            for payout_id in list(run.saved_index):
                run.recall(UUID(payout_id.decode("ascii")).int, 0)
        return run


def _split(blob: Any) -> list[bytes]:
    """The lines of a blob of JSON lines, each ended by a newline."""
    lines = bytes(blob).split(b"\n")
    if lines.pop() != b"":
        raise ValueError("a blob of lines without its last newline")
    return lines


_HEAD_SLICE = itemgetter(slice(0, 39))
_HEAD = ((0, b"["), (1, b'"'), (10, b"-"), (15, b"-"), (20, b"-"), (25, b"-"), (38, b'"'))
"""Where a saved line's head ('["' + a payout id + '"') has which character: its other
32 characters are lowercase hex digits."""


def _index(lines: list[bytes]) -> dict[bytes, int]:
    """Where each saved line is, by its payout id: the first value of the line,
    '["' + 36 characters + '"', as ``uuid_text`` writes it. A line whose id is not
    so written, or an id twice, refuses the file (checked on all lines at once)."""
    n = len(lines)
    heads = b"".join(map(_HEAD_SLICE, lines))
    form = len(heads) == 39 * n and all(heads[at::39] == char * n for at, char in _HEAD)
    if not form or heads.translate(None, b"0123456789abcdef") != b'["----"' * n:
        raise CheckpointRefusedError("an open payout's line does not start with its payout id")
    ids = map(heads.__getitem__, map(slice, range(2, 39 * n, 39), range(38, 39 * n + 38, 39)))
    index = dict(zip(ids, count()))
    if len(index) != n:
        raise CheckpointRefusedError("it saves an open payout twice")
    return index


def _saved_summary(line: bytes | None) -> PayoutSummary:
    """A payout the checkpoint saved open, as a summary."""
    try:
        return _summary_of(json.loads(line))  # type: ignore[arg-type]  # None: TypeError
    except (ValueError, TypeError, KeyError, AttributeError):
        raise CheckpointRefusedError("the file is damaged: a saved payout cannot be read") from None


def _saved_rows(lines: Iterable[bytes | None]) -> Iterator[InFlightPayout]:
    """The report's rows of saved payouts in flight (read 4,096 lines at a time)."""
    lines = iter(lines)
    while chunk := list(islice(lines, 4096)):
        try:
            states = json.loads(b"[" + b",".join(chunk) + b"]")  # type: ignore[arg-type]
            # ``in_flight_row`` of each, from its ``_SUMMARY`` fields by position
            rows = [InFlightPayout(s[1] or "", s[0], s[5], s[3], s[4], s[7]) for s in states]
        except (ValueError, TypeError, IndexError):
            raise CheckpointRefusedError(
                "the file is damaged: a saved payout cannot be read"
            ) from None
        yield from rows


def _encoded(p: PayoutSummary) -> bytes:
    return json.dumps(_summary_state(p), separators=(",", ":")).encode("utf-8")


_first = itemgetter(0)
_started = attrgetter("started_notification_id")


def _totals_state(totals: Totals) -> list[Any]:
    return [[asdict(c) for c in totals[0].values()], [asdict(t) for t in totals[1].values()]]


def _totals_of(state: list[Any]) -> Totals:
    currencies, providers = state
    return (
        {c["currency"]: CurrencyTotals(**c) for c in currencies},
        {(t["provider_id"], t["currency"]): ProviderTotals(**t) for t in providers},
    )


_SUMMARY = ("payout_id", "event_service_id", "provider_id", "amount", "currency", "attempt",
            "destination", "open_since", "successes", "failed", "released_transfer",
            "transfer_id", "reversed", "version")  # fmt: skip
_REVERSAL = ("attempt", "status", "since", "reference", "key", "amount", "reversed_before")


def _summary_state(p: PayoutSummary) -> list[Any]:
    """A summary as a list of its ``_SUMMARY`` fields, then its reversal's (or None)."""
    r = p.reversal
    return [
        uuid_text(p.key),
        *(getattr(p, name) for name in _SUMMARY[1:]),
        None if r is None else [getattr(r, name) for name in _REVERSAL],
    ]


def _summary_of(state: list[Any]) -> PayoutSummary:
    (payout_id, event_service_id, provider_id, amount, currency, attempt, destination,
     open_since, successes, failed, released_transfer, transfer_id, reversed_, version,
     reversal) = state  # fmt: skip
    p = PayoutSummary.__new__(PayoutSummary)
    p.key, p.event_service_id, p.provider_id, p.amount = (
        UUID(payout_id).int,
        event_service_id,
        provider_id,
        amount,
    )
    p.currency, p.attempt, p.destination, p.open_since = currency, attempt, destination, open_since
    p.successes, p.failed, p.released_transfer = successes, failed, released_transfer
    p.transfer_id, p.reversed, p.version, p.reversal = transfer_id, reversed_, version, None
    if reversal is not None:
        r = p.reversal = ReversalSummary()
        for name, value in zip(_REVERSAL, reversal, strict=True):
            setattr(r, name, value)
    return p


def _drained(payouts: dict[int, PayoutSummary]) -> Iterator[PayoutSummary]:
    """Every summary, each taken out of ``payouts`` as it is yielded."""
    while payouts:
        yield payouts.popitem()[1]


class _Discarded(list[Violation]):
    """The violations of a rebuild: reported when the pass read those events."""

    def append(self, violation: Violation) -> None:
        pass


_NO_TRANSFERS = TransferIds()
"""A rebuild records no transfer id: the pass did."""


def _replay(
    ledger: PayoutLedger,
    page_size: int,
    on_page: PageCallback | None,
    keep_summaries: Callable[[dict[int, PayoutSummary]], None] | None,
    decode: Decode,
    summaries_limit: int,
    suspects: set[int] | None,
    restored: _Replay | None = None,
) -> _Replay:
    """One pass over the log (``restored``: over the events after its checkpoint)."""
    if restored is None:
        auditor = Auditor(
            keep_service_ids=keep_summaries is not None, transfers=TransferIds(suspects)
        )
        run = _Replay(ledger, auditor, None if keep_summaries is not None else summaries_limit)
        after = None
    else:
        run, auditor = restored, restored.auditor
        after = run.report.last_notification_id
    folds = auditor.folds
    by_topic = run.by_topic
    report = run.report
    finding = auditor.violations.append
    payouts = auditor.payouts
    limit = run.limit
    recall = run.recall
    if decode == "mapper":
        for nid, key, version, topic, state in _mapper_states(ledger, page_size, on_page, after):
            report.events += 1
            report.last_notification_id = nid
            by_topic[topic] = by_topic.get(topic, 0) + 1
            if topic == ILL_TYPED_ROW:
                finding(_ill_typed(nid, key, version, topic, _BAD_COLUMNS))
            elif topic not in KNOWN_TOPICS:
                finding(_unknown_topic(nid, key, version, topic))
            elif isinstance(state, Exception):
                finding(_undecodable(nid, key, version, topic, state))
            elif state is not None:
                check, step = folds[topic]
                why = check(state)
                if why is not None:
                    finding(_ill_typed(nid, key, version, topic, why))
                    continue
                if limit and topic in _PAYOUT_TOPICS and key not in payouts:
                    recall(key, nid)
                try:
                    step(state, nid, key, version)
                except (KeyError, TypeError) as exc:  # a malformed event is a finding
                    finding(_undecodable(nid, key, version, topic, exc))
            if limit and len(payouts) > run.next_eviction:
                run.evict()
        return run
    # The hot loop: one page of tuples at a time, no per-event objects but the state.
    decode_state = run.decode_state
    mapper = ledger.mapper
    ordinary = (
        OrdinaryEvents(LEDGER_EVENT_CLASSES, FOLDED).fields
        if mapper.cipher is None and mapper.compressor is None
        else None
    )
    respelt = isinstance(ledger.recorder, SQLiteApplicationRecorder)
    payout_topics = _PAYOUT_TOPICS
    for page in iter_states(ledger, page_size=page_size, on_page=on_page, after=after):
        for nid, oid, version, topic, stored in page:
            by_topic[topic] = by_topic.get(topic, 0) + 1
            fold = folds.get(topic)
            if fold is None:
                if topic == ILL_TYPED_ROW:
                    finding(_ill_typed(nid, int(oid, 16), version, topic, _BAD_COLUMNS))
                elif topic not in KNOWN_TOPICS:
                    finding(_unknown_topic(nid, int(oid, 16), version, topic))
                continue
            key = 0
            try:
                # 32 hex digits as written; SQLite text could be spelt otherwise.
                if len(oid) == 32 and (not respelt or oid.islower() or oid.isdigit()):
                    key = int(oid, 16)
                else:
                    key = UUID(oid).int
                    if respelt:
                        run.respelt.setdefault(key, []).append((nid, oid, version, topic, stored))
                # An ordinary state's folded fields have their types: no check needed.
                state = ordinary(topic, stored) if ordinary is not None else None
                why = None
                if state is None:
                    state = decode_state(topic, stored)
                    why = fold[0](state)
                if why is None:
                    if limit and topic in payout_topics and key not in payouts:
                        recall(key, nid)
                    fold[1](state, nid, key, version)
                else:
                    finding(_ill_typed(nid, key, version, topic, why))
            except CheckpointRefusedError:  # a payout it saved, taken up: not the event's
                raise
            except Exception as exc:  # a damaged or malformed event is a finding
                finding(_undecodable(nid, key, version, topic, exc))
        report.events += len(page)
        report.last_notification_id = page[-1][0]
        if limit and len(payouts) > run.next_eviction:
            run.evict()
    return run


_Folded = tuple[int, int, int, str, "dict[str, Any] | Exception | None"]
"""(notification id, payout id as int, version, topic, state: a dict, an error, or None)."""


def _mapper_states(
    ledger: PayoutLedger, page_size: int, on_page: PageCallback | None, after: int | None
) -> Iterator[_Folded]:
    wanted = _AUDITED_TOPICS
    to_domain_event = ledger.mapper.to_domain_event
    start = None if after is None else after + 1
    for n in iter_notifications(ledger, start=start, page_size=page_size, on_page=on_page):
        key, topic = UUID(str(n.originator_id)).int, n.topic
        if topic not in wanted:
            yield n.id, key, n.originator_version, topic, None
            continue
        try:
            state = vars(to_domain_event(n))
        except Exception as exc:  # a damaged event is a finding
            yield n.id, key, n.originator_version, topic, exc
        else:
            yield n.id, key, n.originator_version, topic, state


def _named(ledger: PayoutLedger, violation: Violation) -> Violation:
    """The violation with its event service id (read back from the payout's first event)."""
    if violation.event_service_id is not None:
        return violation
    service = _service_named(ledger, violation.payout_id)
    return replace(violation, event_service_id=service) if service else violation


def _service_named(ledger: PayoutLedger, payout_id: str) -> str:
    """The event service of a payout, read back from its first event ("" if unreadable)."""
    try:
        [first] = ledger.events.get(UUID(payout_id), lte=1)
    except Exception:
        return ""
    service = getattr(first, "event_service_id", None)
    return service if isinstance(service, str) else ""


_BAD_COLUMNS = "the stored row's columns have impossible types (an edited SQLite file)"

KNOWN_TOPICS = frozenset(get_topic(cls) for cls in LEDGER_EVENT_CLASSES)
"""Every topic the ledger writes. Any other (another import path that resolves to
the same class, a made-up name) is a row the ledger did not write: undecodable."""


def _unknown_topic(nid: int, key: int, version: int, topic: str) -> Violation:
    return _undecodable(
        nid, key, version, topic, ValueError(f"topic {topic!r} is not one the ledger writes")
    )


def _ill_typed(nid: int, key: int, version: int, topic: str, why: str) -> Violation:
    event_type = topic.rsplit(":", 1)[-1]
    return Violation(
        kind=ViolationKind.ILL_TYPED,
        notification_id=nid,
        payout_id=str(UUID(int=key)),
        originator_version=version,
        event_type=event_type,
        event_service_id=None,
        detail=f"{event_type} is not folded: {why}",
    )


def _undecodable(nid: int, key: int, version: int, topic: str, exc: Exception) -> Violation:
    return Violation(
        kind=ViolationKind.UNDECODABLE,
        notification_id=nid,
        payout_id=str(UUID(int=key)),
        originator_version=version,
        event_type=topic.rsplit(":", 1)[-1],
        event_service_id=None,
        detail=f"cannot read the stored event: {type(exc).__name__}: {exc}",
    )


_PAYOUT_TOPICS = frozenset(
    {
        PayoutAggregate.PayoutStarted.TOPIC,
        PayoutAggregate.TransferFailed.TOPIC,
        PayoutAggregate.TransferSucceeded.TOPIC,
        PayoutAggregate.Released.TOPIC,
        PayoutAggregate.TransferReversed.TOPIC,
        PayoutAggregate.ReversalStarted.TOPIC,
        PayoutAggregate.ReversalSucceeded.TOPIC,
        PayoutAggregate.ReversalFailed.TOPIC,
    }
)
"""The topics folded into a payout's summary (the others fold into totals or the mode)."""

_AUDITED_TOPICS = _PAYOUT_TOPICS | {
    CapturedPayment.PaymentCaptured.TOPIC,
    StoreModeRecord.ModeDeclared.TOPIC,
}
"""The topics the audit folds."""

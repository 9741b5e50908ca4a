"""Verify the log: every hash chain, every seal, and the anchors an operator kept.

[`verify_ledger`][payout_ledger.audit.verify_ledger] recomputes everything from
the stored events, in one pass in notification order:

* each stored event can be read, and its fields have the types its class
  declares (``undecodable``, ``ill_typed``);
* each aggregate's versions follow 1, 2, 3... in notification order;
* each event's ``previous_hash`` is the digest of the aggregate's previous
  event as stored (``GENESIS`` for version 1);
* each seal's event count and rolling digest equal the recomputed ones at its
  ``through_notification_id``;
* each anchored seal digest (``--anchor``) belongs to a seal in the log.

| finding | kind |
|---|---|
| a stored event cannot be read | ``undecodable`` |
| a field does not have its declared type (or a respelt id) | ``ill_typed`` |
| versions skip or go back | ``version_out_of_sequence`` |
| ``previous_hash`` is not the previous event's digest | ``broken_link`` |
| no ``previous_hash`` after chained events | ``unchained_after_chained`` |
| the log differs from what a seal recorded | ``seal_mismatch`` |
| a seal that cannot be right | ``seal_invalid`` |
| an anchored digest is no seal's | ``anchor_not_found`` |
| a row without a notification id (PostgreSQL) | ``hidden_row`` |
| (``strict`` only) an event stored before chaining | ``legacy_unchained`` |
| (``strict`` only) a link with the previous release's v1 digest | ``v1_link`` |

Events stored before chaining existed (``previous_hash`` missing) are a legacy
prefix: allowed only before an aggregate's first chained event, counted, and
protected by seals alone. Links written by the previous release name the v1
digest of the event before ([`legacy_digest`][payout_ledger.domain.chain.legacy_digest],
computed here from that event's stored state): accepted and counted until the
aggregate's first v2 link; after it, a v1 link is a ``broken_link``. Seals
of class version 1 are checked against a rolling digest of v1 digests,
computed only up to the last such seal.
``strict=True`` reports every legacy event and v1 link.

Links are checked by ``payout_ledger.audit.verify_links``, seals read and anchors
matched by ``payout_ledger.audit.verify_seals``; the report's types are in
``payout_ledger.audit.verify_report``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder

from payout_ledger.adapters import telemetry
from payout_ledger.adapters.log import (
    DEFAULT_PAGE_SIZE,
    PageCallback,
    RawEvent,
    aggregate_rows,
    hidden_rows,
    iter_states,
    last_notification_id,
    notification,
)
from payout_ledger.adapters.mapper import StoredRead, chained_mapper, read_notification
from payout_ledger.audit import verify_split
from payout_ledger.audit.checkpoint import (
    Checkpoint,
    CheckpointRefusedError,
    check_binding,
    checkpoint_key_of,
    decode_value,
    encode_value,
    restore_from,
    save_checkpoint,
    seal_binding,
    store_identity,
)
from payout_ledger.audit.stored import (
    LEDGER_EVENT_CLASSES,
    OrdinaryEvents,
    SeenFilter,
    StoredDigest,
    filter_bits,
    restored_filter,
    saved_filter,
)
from payout_ledger.audit.verify_links import Head, check_link, v1_digest
from payout_ledger.audit.verify_report import ChainProblem, ProblemKind, VerifyReport, problem_at
from payout_ledger.audit.verify_seals import Seal, check_anchors, read_seals
from payout_ledger.domain.chain import GENESIS, roll
from payout_ledger.domain.seal import LEDGER_SEAL_ID, LedgerSeal
from payout_ledger.domain.typecheck import type_check
from payout_ledger.errors import InvalidRequestError

if TYPE_CHECKING:
    from payout_ledger.service.ledger import PayoutLedger

__all__ = ["ChainProblem", "ProblemKind", "VerifyReport", "verify_ledger"]


HEADS_LIMIT = 200_000
"""Aggregates whose chain head verify keeps at most; older ones are rebuilt from the log."""


@telemetry.traced(
    "payout_ledger.verify",
    lambda report: {"events": report.events, "problems": len(report.problems), "ok": report.ok},
)
def verify_ledger(
    ledger: PayoutLedger,
    *,
    anchors: Iterable[str] = (),
    strict: bool = False,
    page_size: int = DEFAULT_PAGE_SIZE,
    on_page: PageCallback | None = None,
    heads_limit: int = HEADS_LIMIT,
    checkpoint: str | os.PathLike[str] | None = None,
    full: bool = False,
    checkpoint_key: str | None = None,
    processes: int = 1,
) -> VerifyReport:
    """Recompute every chain and seal; see the module docs for what is checked.

    Memory stays bounded: the chain heads of at most ``heads_limit`` aggregates
    are kept, and the head of any other is rebuilt from the log when its next
    event comes (see ``_VerifyPass``).

    With ``checkpoint`` (a file path), verify continues from the state that
    file holds, at its seal, and reads only the events after it; then it writes
    the file anew at the log's latest seal. ``full=True`` reads the whole log
    whatever the file holds. A missing, damaged or refused file makes a full
    run; the report's ``checkpoint`` says which (see
    ``payout_ledger.audit.checkpoint``). ``checkpoint_key`` (default: the
    ledger's ``checkpoint_key`` setting) keys the file's digest, so that a file
    rewritten without the key is refused.

    ``processes=2`` lets a full run read the log in two processes, split at a
    seal (see ``payout_ledger.audit.verify_split``): about twice as fast on a
    machine with two free cores, with the same report. ``report.processes``
    says how many did; any doubt makes it one.
    """
    if processes not in (1, 2) or type(processes) is not int:
        raise InvalidRequestError(f"processes must be 1 or 2, not {processes!r}")
    key = checkpoint_key_of(ledger, checkpoint_key)
    run = None
    if processes == 2:
        run = _verify(ledger, strict, page_size, on_page, heads_limit, checkpoint, full, key, True)
    if run is None:
        run = _verify(ledger, strict, page_size, on_page, heads_limit, checkpoint, full, key, False)
        assert run is not None
    report, seals = run.report, run.seals
    run.finish()
    check_anchors(anchors, seals, report)
    if checkpoint is not None:
        if run.snapshot is not None:
            save_checkpoint(checkpoint, run.snapshot, key)
        else:
            report.checkpoint += "; no checkpoint written: the log has no seal to chain it to"
    return report


def _verify(
    ledger: PayoutLedger,
    strict: bool,
    page_size: int,
    on_page: PageCallback | None,
    heads_limit: int,
    checkpoint: str | os.PathLike[str] | None,
    full: bool,
    key: bytes | None,
    split: bool,
) -> _VerifyPass | None:
    """The pass over the log, all but its ``finish``.

    ``split``: a full run reads the log in two processes, split at a seal, when
    it can (``payout_ledger.audit.verify_split``); None if the split cannot
    stand for the one pass: the caller then makes the one pass.
    """
    report = VerifyReport()
    mapper = chained_mapper(ledger)
    seals = read_seals(ledger, mapper, report, page_size)
    run = _VerifyPass(ledger, report, seals, strict=strict, heads_limit=heads_limit)
    after = None
    if checkpoint is not None:
        report.checkpoint, after = run.restore(checkpoint, full, key)
        report.incremental = after is not None
        run.snapshot_due = bool(seals)
    at = None
    if split and after is None and not report.problems and verify_split.splittable(ledger):
        at = verify_split.split_seal(seals, last_notification_id(ledger))
    first = None
    if at is not None:
        try:
            half = max(1, heads_limit // 8)  # two processes: each keeps an eighth as many
            first = verify_split.FirstPart(
                ledger,
                at,
                strict=strict,
                heads_limit=half,
                page_size=page_size,
                seen_bits=len(run.seen.bits) * 8,
            )
            run.heads_limit = half
        except Exception:  # no second process (its request or its start failed): one
            first = None
    if at is None or first is None:  # one process
        run.read(page_size=page_size, on_page=on_page, after=after)
        return run
    try:
        run.continue_after(at)
        run.read(page_size=page_size, on_page=on_page, after=at.info.through_notification_id)
    except BaseException:
        first.stop()
        raise
    run.let_go()
    done = first.result()
    if done is None or not run.join(done, at):
        return None
    return run


def first_part_pass(
    ledger: PayoutLedger,
    *,
    through: int,
    strict: bool,
    heads_limit: int,
    page_size: int,
    seen_bits: int,
) -> _VerifyPass:
    """The pass over the events up to ``through`` (a seal's position), with that seal's check.

    The second process of a split run (``payout_ledger.audit.verify_split``).
    """
    report = VerifyReport()
    seals = read_seals(ledger, chained_mapper(ledger), report, page_size)
    seals = [s for s in seals if s.info.through_notification_id <= through]
    run = _VerifyPass(
        ledger, report, seals, strict=strict, heads_limit=heads_limit, seen_bits=seen_bits
    )
    run.read(page_size=page_size, on_page=None, through=through)
    while run.pending:
        run.check_seal(run.pending.popleft())
    return run


class _VerifyPass:
    """One pass over the log in notification order.

    Most events are *ordinary* (see ``payout_ledger.audit.stored``): their digest
    is taken over the stored bytes, their link and version checked against the
    aggregate's head, and nothing else is built. Every other event, and every
    event whose link or version is not the expected one, is checked by the
    mapper-based path, event by event, with the findings and counts of the
    original algorithm. Heads are kept for the ``heads_limit`` aggregates most
    recently seen; an aggregate a ``SeenFilter`` may have seen whose head is
    not kept is rebuilt from its earlier events in the log (one indexed query)
    before its event is checked, so bounding memory changes no finding.
    """

    def __init__(
        self,
        ledger: PayoutLedger,
        report: VerifyReport,
        seals: list[Seal],
        *,
        strict: bool,
        heads_limit: int,
        seen_bits: int | None = None,
    ) -> None:
        self.ledger = ledger
        self.report = report
        self.strict = strict
        self.heads_limit = max(1, heads_limit)
        self.mapper = chained_mapper(ledger)
        self.seals = seals
        self.pending = deque(seals)
        self.heads: dict[str, Any] = {}
        """Chain heads by aggregate id: a ``Head``, or the fast path's tuple."""
        self.seen = SeenFilter(seen_bits or filter_bits(last_notification_id(ledger)))
        self.rolling = _GENESIS_BYTES
        self.rolling_v1 = GENESIS
        self.count = 0
        self.aggregates = 0
        self.previous_through = 0
        self.v1_through = max(
            (s.info.through_notification_id for s in seals if s.class_version == 1), default=None
        )
        self.sealed_through = seals[-1].info.through_notification_id if seals else None
        self.seal_problems = len(report.problems)
        """Findings of the seals' own checks (made before the pass, on every run)."""
        self.snapshot_due = False
        self.snapshot: Checkpoint | None = None
        self.respelt: dict[str, list[RawEvent]] = {}
        """SQLite rows whose originator id is not spelt as the store writes it, by the id
        they name (``""``: no UUID), as the pass meets them."""
        self.spelling_checked = isinstance(ledger.recorder, SQLiteApplicationRecorder)
        self.seen_bytes = len(self.seen.bits)
        self.rebuild_unseen = False
        """Rebuild every aggregate without a head (the part after a split's seal)."""
        self.new_ids: bytearray | None = None
        """The part after a split's seal: each aggregate it saw start, as 16 bytes."""

    def read(
        self,
        *,
        page_size: int,
        on_page: PageCallback | None,
        after: int | None = None,
        through: int | None = None,
    ) -> None:
        """Check the events after ``after`` (all by default), up to ``through`` (all)."""
        report, heads, pending, seen = self.report, self.heads, self.pending, self.seen
        new_ids = self.new_ids
        mapper = self.mapper
        plain = mapper.cipher is None and mapper.compressor is None
        ordinary = OrdinaryEvents(LEDGER_EVENT_CLASSES).previous_hash
        digest_of = StoredDigest()
        sha256 = hashlib.sha256
        v1_through = self.v1_through if self.v1_through is not None else _SMALLEST
        sealed_through = self.sealed_through if self.sealed_through is not None else _SMALLEST
        spelling_checked = self.spelling_checked
        canonical = _CANONICAL_ID
        sealed_topic, seal_id = LedgerSeal.Sealed.TOPIC, LEDGER_SEAL_ID.hex
        limit = self.heads_limit
        rolling = self.rolling
        count = self.count
        chained = aggregates = unsealed = 0
        stop = _LARGEST if through is None else through
        next_seal = min(pending[0].info.through_notification_id if pending else _LARGEST, stop)
        pages = iter_states(
            self.ledger, page_size=page_size, on_page=on_page, after=after, checked=False
        )
        for page in pages:
            for nid, oid, version, topic, stored in page:
                if nid > next_seal:
                    self.rolling, self.count = rolling, count
                    report.chained_events += chained
                    report.unsealed_events += unsealed
                    self.aggregates += aggregates
                    chained = aggregates = unsealed = 0
                    while pending and pending[0].info.through_notification_id < nid:
                        self.check_seal(pending.popleft())
                    if nid > stop:
                        return
                    next_seal = min(
                        pending[0].info.through_notification_id if pending else _LARGEST, stop
                    )
                count += 1
                if nid > sealed_through:
                    unsealed += 1
                previous = None
                plaintext: bytes | None = stored
                respelt = spelling_checked and (type(oid) is not str or not canonical(oid))
                if respelt:
                    self.respelt_row(nid, oid, version, topic, stored)
                if topic == sealed_topic and oid != seal_id:
                    self.stray_seal(nid, oid, version, topic, stored)
                if (
                    nid > v1_through
                    and not respelt
                    and type(stored) is bytes
                    and type(version) is int
                ):
                    if not plain:
                        plaintext = self.plaintext(stored)
                    if plaintext is not None:
                        previous = ordinary(topic, plaintext)
                if previous is None or plaintext is None:
                    self.rolling = rolling
                    self.event(nid, oid, version, topic, stored)
                    rolling = self.rolling
                    continue
                digest = digest_of(topic, oid, version, plaintext)
                rolling = sha256(rolling + nid.to_bytes(8, "big", signed=True) + digest).digest()
                # A head the fast path keeps: (version, digest, notification id, v2 linked).
                head = heads.get(oid)
                if head is None:
                    if version == 1 and previous == GENESIS and not seen.add(key := int(oid, 16)):
                        heads[oid] = (1, digest.hex(), nid, False)
                        chained += 1
                        aggregates += 1
                        if new_ids is not None:
                            new_ids += key.to_bytes(16, "big")
                        if len(heads) > limit:
                            self.evict()
                        continue
                elif type(head) is tuple and version == head[0] + 1 and previous == head[1]:
                    heads[oid] = (version, digest.hex(), nid, True)
                    chained += 1
                    continue
                self.rolling = rolling  # rolled: the full check of its link and version
                self.event(nid, oid, version, topic, stored, rolled=True)
            report.last_notification_id = page[-1][0]
        self.rolling, self.count = rolling, count
        report.chained_events += chained
        report.unsealed_events += unsealed
        self.aggregates += aggregates

    def respelt_row(self, nid: int, oid: Any, version: Any, topic: Any, stored: Any) -> None:
        self.respelt.setdefault(_respelt_key(oid), []).append((nid, oid, version, topic, stored))

    def stray_seal(self, nid: int, oid: Any, version: Any, topic: Any, stored: Any) -> None:
        self.report.problems.append(
            problem_at(
                ProblemKind.SEAL_INVALID,
                notification(nid, oid, version, topic, stored),
                "a Sealed event outside the ledger's seal aggregate: no seal, and not one "
                "the ledger wrote",
            )
        )

    def plaintext(self, stored: bytes) -> bytes | None:
        try:
            return self.mapper.plaintext(cast(StoredEvent, _Stored(stored)))
        except Exception:  # the event path reports it
            return None

    def event(
        self, nid: int, oid: str, version: int, topic: str, stored: bytes, *, rolled: bool = False
    ) -> None:
        """One event through the mapper, as the original algorithm checks it.

        ``rolled``: its digest is already in the rolling digest.
        """
        n = notification(nid, oid, version, topic, stored)
        read = read_notification(self.mapper, n)
        if not rolled:
            self.rolling = hashlib.sha256(
                self.rolling + nid.to_bytes(8, "big", signed=True) + bytes.fromhex(read.digest)
            ).digest()
        report = self.report
        v1: str | None = None
        if self.v1_through is not None and nid <= self.v1_through:
            v1 = v1_digest(self.mapper, n, read)
            self.rolling_v1 = roll(self.rolling_v1, nid, v1)
        event = read.event
        if event is None:
            report.problems.append(problem_at(ProblemKind.UNDECODABLE, n, str(read.error)))
            return
        why = type_check(type(event))(vars(event))
        if why is not None:
            report.problems.append(
                problem_at(ProblemKind.ILL_TYPED, n, f"{type(event).__name__}: {why}")
            )
        self.link(n, event, read, v1)

    def link(self, n: Any, event: Any, read: StoredRead, v1: str | None) -> None:
        key = cast(UUID, event.originator_id).hex
        heads = self.heads
        head = heads.get(key)
        if type(head) is tuple:  # kept by the fast path
            version, digest, nid, v2_linked = head
            if v2_linked:
                head = heads[key] = Head(version, digest, True, nid)
                head.v2_linked = True
            else:  # its v1 digest was not computed: rebuild it
                del heads[key]
                head = None
        maybe_seen = self.seen.add(event.originator_id.int)
        if head is None and (maybe_seen or self.rebuild_unseen):
            self.rebuild(key, n.id)
        new = key not in heads
        head = check_link(n, event, read.digest, heads, self.report, self.strict)
        if head.v2_linked:  # back to the fast path's form (a v2-linked head is all it keeps)
            heads[key] = (head.version, head.digest, head.notification_id, True)
        else:  # the aggregate's next link may still be a v1 link
            head.v1 = v1 if v1 is not None else v1_digest(self.mapper, n, read)
        if new:
            self.aggregates += 1
        if len(heads) > self.heads_limit:
            self.evict()

    def rebuild(self, key: str, before: int) -> None:
        """The head of ``key`` as of notification ``before``, from its earlier stored events."""
        rows = aggregate_rows(self.ledger, key, before)
        extra = [row for row in self.respelt.get(key, ()) if row[0] < before]
        if extra:
            rows = sorted([*rows, *extra])
        scratch: dict[str, Head] = {}
        quiet = VerifyReport()
        for row in rows:
            n = notification(*row)
            read = read_notification(self.mapper, n)
            if read.event is None:
                continue
            head = check_link(n, read.event, read.digest, scratch, quiet, self.strict)
            if not head.v2_linked:
                head.v1 = v1_digest(self.mapper, n, read)
        if key in scratch:
            self.heads[key] = scratch[key]

    def evict(self) -> None:
        heads = self.heads
        for key in list(itertools.islice(heads, len(heads) // 2)):
            del heads[key]

    def check_seal(self, seal: Seal) -> None:
        if self.snapshot_due and seal is self.seals[-1]:
            self.snapshot = self.take_snapshot(seal)
        info = seal.info
        recomputed = self.rolling_v1 if seal.class_version == 1 else self.rolling.hex()
        if info.event_count != self.count or info.log_digest != recomputed:
            previous_through = self.previous_through
            self.report.problems.append(
                ChainProblem(
                    kind=ProblemKind.SEAL_MISMATCH,
                    notification_id=seal.notification_id,
                    originator_id=None,
                    originator_version=info.seal_number,
                    topic=LedgerSeal.Sealed.TOPIC,
                    detail=(
                        f"seal {info.seal_number} recorded {info.event_count} events "
                        f"through notification {info.through_notification_id}, the log has "
                        f"{self.count}, and a different digest: an event after notification "
                        f"{previous_through} and up to {info.through_notification_id} was "
                        "edited, removed, inserted or reordered"
                        if info.event_count != self.count
                        else f"seal {info.seal_number}: the log's digest through notification "
                        f"{info.through_notification_id} differs: an event after "
                        f"notification {previous_through} was edited, removed, inserted "
                        "or reordered"
                    ),
                )
            )
        self.previous_through = info.through_notification_id

    def take_snapshot(self, seal: Seal) -> Checkpoint:
        """The pass's state after every event up to ``seal``'s position, before its check."""
        report = self.report
        body = {
            "rolling": self.rolling.hex(),
            "rolling_v1": self.rolling_v1,
            "count": self.count,
            "previous_through": self.previous_through,
            "aggregates": self.aggregates,
            "chained_events": report.chained_events,
            "legacy_events": report.legacy_events,
            "v1_links": report.v1_links,
            "problems": [asdict(p) for p in report.problems[self.seal_problems :]],
            "respelt": [
                [encode_value(v) for v in row] for rows in self.respelt.values() for row in rows
            ],
            **saved_filter(self.seen),
        }
        return Checkpoint(
            kind="verify",
            store=store_identity(self.ledger),
            position=seal.info.through_notification_id,
            seal=seal_binding(seal),
            body=body,
            blobs={"seen": bytes(self.seen.bits)},  # a copy: the pass goes on
        )

    def restore(
        self, path: str | os.PathLike[str], full: bool, key: bytes | None
    ) -> tuple[str, int | None]:
        """Continue from the checkpoint at ``path``: (what was done, the id to read after)."""
        status, position = restore_from(path, "verify", full, self._continue, key)
        return status, position

    def _continue(self, saved: Checkpoint) -> int:
        """Take up the state ``saved`` holds (all of it read before any is taken)."""
        seal = check_binding(saved, self.ledger, self.seals)
        body = saved.body
        if seal is None or saved.position != seal.info.through_notification_id:
            raise CheckpointRefusedError("it is not chained to a seal of the log")
        recomputed = body["rolling_v1"] if seal.class_version == 1 else body["rolling"]
        if (body["count"], recomputed) != (seal.info.event_count, seal.info.log_digest):
            raise CheckpointRefusedError(
                f"its digest and count are not those seal {seal.info.seal_number} recorded"
            )
        rolling, rolling_v1 = bytes.fromhex(body["rolling"]), body["rolling_v1"]
        count, previous_through = body["count"], body["previous_through"]
        aggregates = body["aggregates"]
        problems = [ChainProblem(**{**p, "kind": ProblemKind(p["kind"])}) for p in body["problems"]]
        respelt: dict[str, list[RawEvent]] = {}
        for encoded in body["respelt"]:
            row = tuple(decode_value(v) for v in encoded)
            self_key = _respelt_key(row[1])
            respelt.setdefault(self_key, []).append(row)
        seen = restored_filter(body, saved.blobs.pop("seen"))
        chained, legacy, v1_links = (
            body["chained_events"], body["legacy_events"], body["v1_links"]
        )  # fmt: skip
        self.rolling, self.rolling_v1 = rolling, rolling_v1
        self.count, self.previous_through = count, previous_through
        self.aggregates = aggregates
        report = self.report
        report.last_notification_id = saved.position
        report.problems.extend(problems)
        report.chained_events, report.legacy_events, report.v1_links = chained, legacy, v1_links
        self.respelt, self.seen = respelt, seen
        self.pending = deque(
            s for s in self.seals if s.info.through_notification_id >= saved.position
        )
        return saved.position

    def continue_after(self, seal: Seal) -> None:
        """Check only the events after ``seal``, from the count and digest it recorded.

        The events up to it are another process's part (``verify_split``).
        """
        info = seal.info
        self.rolling, self.count = bytes.fromhex(info.log_digest), info.event_count
        self.previous_through = info.through_notification_id
        self.report.last_notification_id = info.through_notification_id
        self.pending = deque(
            s for s in self.seals if s.info.through_notification_id > info.through_notification_id
        )
        self.rebuild_unseen = True
        self.new_ids = bytearray()

    def let_go(self) -> None:
        """Drop the chain heads and the filter of seen aggregates: the pass is over.

        (Its snapshot holds a copy of the filter.) So that this process holds
        the other's filter, when it comes, in their stead.
        """
        self.seen_bytes = len(self.seen.bits)
        self.heads.clear()
        self.seen = SeenFilter(1 << 16)

    def join(self, first: verify_split.FirstPartResult, seal: Seal) -> bool:
        """Add the part up to ``seal`` (another process's) to this one's; False if it
        cannot stand for the one pass (see ``verify_split``)."""
        through = seal.info.through_notification_id
        new_ids = self.new_ids if self.new_ids is not None else bytearray()
        if (
            not first.clean
            or first.store != store_identity(self.ledger)
            or len(first.seen) != self.seen_bytes
            or verify_split.first_seen_before(self.ledger, first, new_ids, through)
        ):
            return False
        self.new_ids = None  # checked
        del new_ids
        report = self.report
        self.aggregates += first.aggregates
        report.chained_events += first.chained_events
        report.legacy_events += first.legacy_events
        report.v1_links += first.v1_links
        report.processes = 2
        if self.snapshot is not None:  # the one pass's filter: both parts' aggregates
            _add_bits(first.seen, self.snapshot.blobs["seen"])
            self.snapshot.blobs["seen"] = first.seen
            body = self.snapshot.body
            body["aggregates"] += first.aggregates
            body["chained_events"] += first.chained_events
            body["legacy_events"] += first.legacy_events
            body["v1_links"] += first.v1_links
        return True

    def finish(self) -> None:
        report = self.report
        while self.pending:
            self.check_seal(self.pending.popleft())
        _check_sqlite_ids(self.respelt, report)
        for oid, version, topic in hidden_rows(self.ledger):
            report.problems.append(
                ChainProblem(
                    kind=ProblemKind.HIDDEN_ROW,
                    notification_id=None,
                    originator_id=oid,
                    originator_version=version if type(version) is int else None,
                    topic=str(topic),
                    detail="a stored row without a notification id: no reader in notification "
                    "order sees it, no seal covers it, and the ledger applies it",
                )
            )
        report.events = self.count
        report.aggregates = self.aggregates
        report.log_digest = self.rolling.hex()
        report.latest_seal = self.seals[-1].info if self.seals else None


def _add_bits(target: bytearray, other: bytes | bytearray) -> None:
    """Set in ``target`` the bits set in ``other`` (filters of the same size), a
    megabyte at a time: no copy of either is made."""
    step = 1 << 20
    for i in range(0, len(target), step):
        a, b = target[i : i + step], other[i : i + step]
        target[i : i + step] = (int.from_bytes(a, "big") | int.from_bytes(b, "big")).to_bytes(
            len(a), "big"
        )


def _respelt_key(oid: Any) -> str:
    """The id a respelt row names, as 32 hex digits ("" if it names no UUID)."""
    try:
        return UUID(oid).hex if isinstance(oid, str) else ""
    except ValueError:
        return ""


_GENESIS_BYTES = bytes.fromhex(GENESIS)
_SMALLEST = -(2**63) - 1
_CANONICAL_ID = re.compile("[0-9a-f]{32}").fullmatch
_LARGEST = 2**63


class _Stored:
    """What ``ChainedMapper.plaintext`` reads of a stored event."""

    __slots__ = ("state",)

    def __init__(self, state: bytes) -> None:
        self.state = state


def _check_sqlite_ids(respelt: dict[str, list[RawEvent]], report: VerifyReport) -> None:
    """On SQLite, originator ids are text: each must be spelt as the store writes it.

    ``5f0c...`` and ``5F0C...`` or ``5f0c-...`` name the same UUID, so digests
    and chains do not see the difference, but the ledger loads an aggregate's
    events by the exact text: a respelt id would hide the event from its
    aggregate. (PostgreSQL's uuid column has one spelling.) ``respelt`` is
    [`respelt_rows`][payout_ledger.adapters.log.respelt_rows].
    """
    rows = sorted(row for rows in respelt.values() for row in rows)
    for rowid, originator_id, version, topic, _ in rows:
        report.problems.append(
            ChainProblem(
                kind=ProblemKind.ILL_TYPED,
                notification_id=rowid,
                originator_id=str(originator_id),
                originator_version=version,
                topic=topic,
                detail=f"originator_id is stored as {originator_id!r}, not as the 32 "
                "lower-case hex digits the store writes: the ledger would not load this "
                "event with its aggregate",
            )
        )

"""The audit's rules: fold each event into its payout's summary, noting violations.

The rules are listed in ``payout_ledger.audit.replay``, which reads the log and
feeds every event to an ``Auditor``.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterator
from itertools import accumulate
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

from payout_ledger.audit.report import PayoutSummary, ReversalSummary, Violation, ViolationKind
from payout_ledger.domain.payout import (
    PayoutAggregate,
    ReversalStatus,
    parse_reversal_idempotency_key,
)
from payout_ledger.domain.store_mode import StoreMode, StoreModeRecord
from payout_ledger.domain.stripe_events import CapturedPayment
from payout_ledger.domain.typecheck import TypeCheck, type_check

__all__ = ["FOLDED", "Auditor", "TransferIds"]


class TransferIds:
    """Which payout recorded each transfer id first, in bounded memory.

    Keeping every transfer id of a large log would take more memory than the
    rest of the audit. A first pass keeps 8 bytes per transfer (a 64-bit hash
    of the id) and reports nothing;
    [`suspects`][payout_ledger.audit.rules.TransferIds.suspects] then names the
    hashes recorded more than once. Only if there are any (a reused id, a
    payout that recorded its transfer twice, or a one-in-2**64 collision) does
    the audit read the log again, keeping the exact ids of those hashes: a
    reused transfer id is reported as a one-pass audit with every id in memory
    would, at its second use.
    """

    BUCKETS = 1 << 16
    """Small buckets: a run from a checkpoint checks only the buckets its new ids fall in."""

    def __init__(self, suspects: set[int] | None = None) -> None:
        self.hashes: defaultdict[int, array[int]] = defaultdict(_bucket)
        """Per bucket, the hashes recorded by this run."""
        self.checked: dict[int, int] = {}
        """Per bucket, how many of this run's hashes were already found unique."""
        self.saved: memoryview = memoryview(b"").cast("Q")
        """The hashes of the checkpoint the run started from, bucket after bucket: unique."""
        self.offsets = array("Q", bytes(8 * (self.BUCKETS + 1)))
        """Where each bucket's saved hashes start in ``saved`` (and, last, their count)."""
        self.suspected: set[int] = suspects or set()
        """Hashes whose ids are kept exactly (from a first pass, or a checkpoint)."""
        self.exact: dict[str, int] = {}
        """For a suspected hash: each transfer id and the payout that recorded it first."""

    def record(self, transfer_id: str, key: int) -> int | None:
        """Note ``transfer_id`` for payout ``key``; the payout that recorded it first, if
        another one did (known only for a suspected hash)."""
        h = transfer_hash(transfer_id)
        if h in self.suspected:
            owner = self.exact.setdefault(transfer_id, key)
            return owner if owner != key else None
        self.hashes[h & (self.BUCKETS - 1)].append(h)
        return None

    def suspects(self) -> set[int]:
        """Hashes not yet suspected that were recorded more than once.

        Only buckets with hashes recorded since the last check are read.
        """
        found: set[int] = set()
        checked, saved, offsets = self.checked, self.saved, self.offsets
        for bucket, hashes in self.hashes.items():
            if len(hashes) == checked.get(bucket, 0):
                continue
            once = set(saved[offsets[bucket] : offsets[bucket + 1]])
            for h in hashes:
                if h in once:
                    found.add(h)
                once.add(h)
            checked[bucket] = len(hashes)
        return found

    def counts(self) -> array[int]:
        """How many hashes each bucket holds, saved and recorded."""
        offsets, hashes = self.offsets, self.hashes
        return array(
            "I",
            (
                offsets[b + 1] - offsets[b] + (len(hashes[b]) if b in hashes else 0)
                for b in range(self.BUCKETS)
            ),
        )

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """Every hash, bucket after bucket (the form ``restore`` takes), in chunks of about
        ``size`` bytes: never a second copy of them all."""
        offsets, hashes, saved = self.offsets, self.hashes, self.saved.cast("B")
        parts: list[Any] = []
        held = 0
        for b in range(self.BUCKETS):
            start, end = offsets[b], offsets[b + 1]
            if start != end:
                parts.append(saved[start * 8 : end * 8])
                held += (end - start) * 8
            if b in hashes:
                parts.append(hashes[b])
                held += len(hashes[b]) * 8
            if held >= size:
                yield b"".join(parts)
                parts, held = [], 0
        if parts:
            yield b"".join(parts)

    @classmethod
    def restore(
        cls, suspected: set[int], exact: dict[str, int], saved: Any, counts: Any
    ) -> TransferIds:
        """The hashes of a checkpoint (``chunks`` and ``counts``), found unique when saved.

        Raises ``ValueError`` if the two do not fit together.
        """
        ids = cls(suspected)
        ids.exact = exact
        per_bucket = array("I")
        per_bucket.frombytes(counts)
        if len(per_bucket) != cls.BUCKETS:
            raise ValueError("a checkpoint's transfer ids are of another form")
        ids.offsets = array("Q", [0, *accumulate(per_bucket)])
        view = memoryview(saved)
        if ids.offsets[-1] * 8 != view.nbytes:
            raise ValueError("a checkpoint's transfer ids are of another form")
        ids.saved = view.cast("B").cast("Q")
        return ids


def _bucket() -> array[int]:
    return array("Q")


def transfer_hash(transfer_id: str) -> int:
    """A stable 64-bit hash of a transfer id (the same in every process)."""
    return int.from_bytes(
        hashlib.blake2b(transfer_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    )


_Handler = Callable[[dict[str, Any], int, int, int], None]
"""A rule-checking fold step: (event state, notification id, payout id as int, version)."""

_Fold = tuple[TypeCheck, _Handler]
"""The type check of the fields a fold step reads, and the step."""

FOLDED: dict[type, tuple[str, ...]] = {
    PayoutAggregate.PayoutStarted: (
        "event_service_id",
        "provider_id",
        "amount",
        "currency",
        "attempt",
        "destination_account",
        "source_transaction",
        "description",
    ),
    PayoutAggregate.TransferFailed: ("attempt",),
    PayoutAggregate.TransferSucceeded: (
        "attempt",
        "transfer_id",
        "simulated",
        "amount",
        "currency",
        "destination_account",
    ),
    PayoutAggregate.Released: ("transfer_id",),
    PayoutAggregate.TransferReversed: ("transfer_id", "amount_reversed"),
    PayoutAggregate.ReversalStarted: (
        "reversal_attempt",
        "reference",
        "transfer_id",
        "amount",
        "currency",
        "reason",
        "idempotency_key",
        "reversed_before",
    ),
    PayoutAggregate.ReversalSucceeded: (
        "reversal_attempt",
        "reference",
        "idempotency_key",
        "reversal_id",
        "amount",
        "amount_reversed",
        "stripe_request_id",
    ),
    PayoutAggregate.ReversalFailed: (
        "reversal_attempt",
        "reference",
        "idempotency_key",
        "failure_code",
        "failure_message",
        "stripe_request_id",
    ),
    CapturedPayment.PaymentCaptured: ("currency", "amount"),
    StoreModeRecord.ModeDeclared: ("mode",),
}
"""The fields each fold step reads: checked before it runs, so nothing ill-typed is folded."""


class Auditor:
    """Folds event states into per-payout summaries and records violations.

    Payouts are keyed by their id as an int (44 bytes, where a UUID object
    takes 100 and its text 80). A payout keeps its event service id only while
    an attempt is in flight (to list it), unless ``keep_service_ids``: the
    violations name theirs at the end. This keeps 1M events under 200 MB.
    """

    def __init__(self, *, keep_service_ids: bool, transfers: TransferIds | None = None) -> None:
        self.keep_service_ids = keep_service_ids
        self.payouts: dict[int, PayoutSummary] = {}
        """The summaries kept (a bounded audit lets settled ones go, see ``replay``)."""
        self.created = 0
        """Payouts started: summaries made, whether still kept or not."""
        self.transfers = transfers if transfers is not None else TransferIds()
        self.violations: list[Violation] = []
        self.captured: dict[str, list[int]] = {}
        steps: dict[type, _Handler] = {
            PayoutAggregate.PayoutStarted: self.started,
            PayoutAggregate.TransferFailed: self.failed,
            PayoutAggregate.TransferSucceeded: self.succeeded,
            PayoutAggregate.Released: self.released,
            PayoutAggregate.TransferReversed: self.reversed,
            PayoutAggregate.ReversalStarted: self.reversal_started,
            PayoutAggregate.ReversalSucceeded: self.reversal_succeeded,
            PayoutAggregate.ReversalFailed: self.reversal_failed,
            CapturedPayment.PaymentCaptured: self.captured_payment,
            StoreModeRecord.ModeDeclared: self.mode_declared,
        }
        self.simulated: bool | None = None
        """Whether the store's money is simulated: its recorded mode, else its first transfer."""
        self.folds: dict[str, _Fold] = {
            get_topic(cls): (type_check(cls, FOLDED[cls]), step) for cls, step in steps.items()
        }

    def violate(
        self, kind: ViolationKind, event_type: str, nid: int, key: int, version: int, detail: str
    ) -> None:
        payout = self.payouts.get(key)
        self.violations.append(
            Violation(
                kind=kind,
                notification_id=nid,
                payout_id=str(UUID(int=key)),
                originator_version=version,
                event_type=event_type,
                event_service_id=payout.event_service_id if payout else None,
                detail=detail,
            )
        )

    def started(self, e: dict[str, Any], nid: int, key: int, version: int) -> None:
        p = self.payouts.get(key)
        attempt = e["attempt"]
        if p is None:
            intern = sys.intern
            p = PayoutSummary(
                key,
                e["event_service_id"],
                intern(e["provider_id"]),
                e["amount"],
                intern(e["currency"]),
            )
            self.payouts[key] = p
            self.created += 1
        else:
            if p.open_since is not None:
                self.violate(
                    ViolationKind.ATTEMPT_WITHOUT_OUTCOME,
                    "PayoutStarted",
                    nid,
                    key,
                    version,
                    f"attempt {attempt} started while attempt {p.attempt} "
                    f"(notification {p.open_since}) has no outcome",
                )
            terms = (e["amount"], e["currency"], e["provider_id"])
            if terms != (p.amount, p.currency, p.provider_id):
                self.violate(
                    ViolationKind.ATTEMPT_TERMS_CHANGED,
                    "PayoutStarted",
                    nid,
                    key,
                    version,
                    f"attempt {attempt} claims {terms[0]} {terms[1]} for {terms[2]}, the "
                    f"payout is {p.amount} {p.currency} for {p.provider_id}",
                )
        p.attempt = attempt
        p.destination = e["destination_account"]
        p.open_since = nid
        p.failed = False
        p.version = version
        p.event_service_id = e["event_service_id"]

    def _concludes(
        self, e: dict[str, Any], event_type: str, nid: int, key: int, version: int
    ) -> PayoutSummary | None:
        p = self.payouts.get(key)
        attempt = e["attempt"]
        if p is None or p.open_since is None or attempt != p.attempt:
            current = "no payout" if p is None else f"attempt {p.attempt} in flight"
            if p is not None and p.open_since is None:
                current = f"attempt {p.attempt} already concluded"
            self.violate(
                ViolationKind.OUTCOME_WITHOUT_ATTEMPT,
                event_type,
                nid,
                key,
                version,
                f"{event_type} for attempt {attempt}, but {current}",
            )
        return p

    def failed(self, e: dict[str, Any], nid: int, key: int, version: int) -> None:
        p = self._concludes(e, "TransferFailed", nid, key, version)
        if p is not None:
            p.open_since = None
            p.destination = None
            p.failed = True
            p.version = version

    def mode_declared(self, e: dict[str, Any], nid: int, key: int, version: int) -> None:
        self.simulated = e["mode"] == StoreMode.SIMULATED.value

    def succeeded(self, e: dict[str, Any], nid: int, key: int, version: int) -> None:
        simulated = e.get("simulated", False)
        if self.simulated is None:
            self.simulated = simulated
        elif simulated != self.simulated:
            self.violate(
                ViolationKind.SIMULATED_IN_REAL_STORE
                if simulated
                else ViolationKind.REAL_IN_SIMULATED_STORE,
                "TransferSucceeded",
                nid,
                key,
                version,
                f"transfer {e['transfer_id']} is {'simulated' if simulated else 'real'} in a "
                f"{'simulated' if self.simulated else 'real'} store",
            )
        p = self._concludes(e, "TransferSucceeded", nid, key, version)
        if p is None:
            return
        transfer_id = e["transfer_id"]
        moved = (e["amount"], e["currency"], e["destination_account"])
        if p.open_since is not None and moved != (p.amount, p.currency, p.destination):
            self.violate(
                ViolationKind.TRANSFER_UNLIKE_CLAIM,
                "TransferSucceeded",
                nid,
                key,
                version,
                f"transfer {transfer_id} moved {moved[0]} {moved[1]} to {moved[2]}, attempt "
                f"{p.attempt} claimed {p.amount} {p.currency} to {p.destination}",
            )
        p.destination = None
        owner = self.transfers.record(transfer_id, key)
        if owner is not None:
            self.violate(
                ViolationKind.TRANSFER_ID_REUSED,
                "TransferSucceeded",
                nid,
                key,
                version,
                f"transfer {transfer_id} is already recorded for payout {UUID(int=owner)}",
            )
        p.successes += 1
        if p.successes > 1:
            self.violate(
                ViolationKind.DOUBLE_TRANSFER,
                "TransferSucceeded",
                nid,
                key,
                version,
                f"transfer {transfer_id} after transfer {p.transfer_id}: "
                f"{p.successes} successful transfers for one event service",
            )
        p.transfer_id = transfer_id
        p.open_since = None
        p.failed = False
        p.version = version
        if not self.keep_service_ids:
            p.event_service_id = None

    def released(self, e: dict[str, Any], nid: int, key: int, version: int) -> None:
        p = self.payouts.get(key)
        transfer_id = e["transfer_id"]
        twice = p is not None and p.released_transfer == transfer_id
        if p is None or not p.successes or p.transfer_id != transfer_id or twice:
            if twice:
                why = "that transfer was already released"
            elif p is None or not p.successes:
                why = "no TransferSucceeded before it"
            else:
                why = f"the payout's transfer is {p.transfer_id}"
            self.violate(
                ViolationKind.RELEASE_WITHOUT_TRANSFER,
                "Released",
                nid,
                key,
                version,
                f"Released of transfer {transfer_id}: {why}",
            )
        if p is not None:
            p.released_transfer = transfer_id
            p.version = version

    def reversed(self, e: dict[str, Any], nid: int, key: int, version: int) -> None:
        p = self.payouts.get(key)
        transfer_id, amount_reversed = e["transfer_id"], e["amount_reversed"]
        if p is None or not p.successes or p.transfer_id != transfer_id:
            has = "no transfer" if p is None or not p.successes else f"transfer {p.transfer_id}"
            self.violate(
                ViolationKind.REVERSAL_WITHOUT_TRANSFER,
                "TransferReversed",
                nid,
                key,
                version,
                f"reversal of transfer {transfer_id}, but the payout has {has}",
            )
        elif amount_reversed > p.amount:
            self.violate(
                ViolationKind.REVERSAL_EXCEEDS_AMOUNT,
                "TransferReversed",
                nid,
                key,
                version,
                f"{amount_reversed} reversed of a {p.amount} {p.currency} transfer",
            )
        if p is not None:
            p.reversed = max(p.reversed, amount_reversed)
            p.version = version

    def reversal_started(self, e: dict[str, Any], nid: int, key: int, version: int) -> None:
        p = self.payouts.get(key)
        attempt, amount = e["reversal_attempt"], e["amount"]
        rule = functools.partial(self.violate, event_type="ReversalStarted", nid=nid, key=key,
                                 version=version)  # fmt: skip
        paid = p is not None and p.released and p.open_since is None
        if p is None or not paid or p.transfer_id != e["transfer_id"]:
            has = "no payout" if p is None else f"a {p.status.value} payout"
            if paid and p is not None:
                has = f"transfer {p.transfer_id}"
            rule(
                ViolationKind.REVERSAL_WITHOUT_TRANSFER,
                detail=f"reversal attempt {attempt} of transfer {e['transfer_id']}, but the "
                f"payout has {has}",
            )
        if p is None:
            return
        r = p.reversal
        if r is None:
            r = p.reversal = ReversalSummary()
        if r.since is not None:
            rule(
                ViolationKind.REVERSAL_WITHOUT_OUTCOME,
                detail=f"reversal attempt {attempt} started while reversal attempt {r.attempt} "
                f"(notification {r.since}) has no outcome",
            )
        if attempt != r.attempt + 1:
            rule(
                ViolationKind.REVERSAL_OUT_OF_SEQUENCE,
                detail=f"reversal attempt {attempt} follows reversal attempt {r.attempt}",
            )
        parsed = parse_reversal_idempotency_key(e["idempotency_key"])
        if (
            parsed is None
            or parsed[1] != attempt
            or PayoutAggregate.create_id(parsed[0]).int != key
        ):
            rule(
                ViolationKind.REVERSAL_KEY_MISMATCH,
                detail=f"reversal attempt {attempt} has the key {e['idempotency_key']!r}, not "
                "its own (reverse_payment.attempt{N}:{event service})",
            )
        left = p.amount - p.reversed
        if amount <= 0 or e["currency"] != p.currency:
            rule(
                ViolationKind.REVERSAL_UNLIKE_PAYOUT,
                detail=f"reversal attempt {attempt} claims {amount} {e['currency']} of a "
                f"{p.amount} {p.currency} payout",
            )
        elif amount > left:
            rule(
                ViolationKind.REVERSAL_EXCEEDS_AMOUNT,
                detail=f"reversal attempt {attempt} claims {amount} {p.currency}, "
                f"{left} of the {p.amount} transferred is not yet reversed",
            )
        if e["reversed_before"] != p.reversed:
            rule(
                ViolationKind.REVERSAL_AMOUNTS_INCONSISTENT,
                detail=f"reversal attempt {attempt} says {e['reversed_before']} was reversed "
                f"before it, the log says {p.reversed}",
            )
        r.attempt = attempt
        r.status = ReversalStatus.IN_FLIGHT.value
        r.since = nid
        r.reference = e["reference"]
        r.key = e["idempotency_key"]
        r.amount = amount
        r.reversed_before = e["reversed_before"]
        p.version = version

    def _concludes_reversal(
        self, e: dict[str, Any], event_type: str, nid: int, key: int, version: int
    ) -> PayoutSummary | None:
        p = self.payouts.get(key)
        r = p.reversal if p is not None else None
        attempt = e["reversal_attempt"]
        rule = functools.partial(self.violate, event_type=event_type, nid=nid, key=key,
                                 version=version)  # fmt: skip
        if r is None or r.since is None or attempt != r.attempt:
            current = "no reversal attempt" if r is None else f"reversal attempt {r.attempt}"
            if r is not None:
                current += " already concluded" if r.since is None else " in flight"
            rule(
                ViolationKind.REVERSAL_OUTCOME_WITHOUT_ATTEMPT,
                detail=f"{event_type} for reversal attempt {attempt}, but {current}",
            )
        elif (e["reference"], e["idempotency_key"]) != (r.reference, r.key) or (
            "amount" in e and e["amount"] != r.amount
        ):
            theirs = f"reference {e['reference']!r}, key {e['idempotency_key']!r}"
            ours = f"reference {r.reference!r}, key {r.key!r}"
            if "amount" in e:
                theirs, ours = f"{theirs}, {e['amount']}", f"{ours}, {r.amount}"
            rule(
                ViolationKind.REVERSAL_UNLIKE_CLAIM,
                detail=f"{event_type} of reversal attempt {attempt} has {theirs}; "
                f"the claim has {ours}",
            )
        return p

    def reversal_succeeded(self, e: dict[str, Any], nid: int, key: int, version: int) -> None:
        p = self._concludes_reversal(e, "ReversalSucceeded", nid, key, version)
        if p is None:
            return
        r, total = p.reversal, e["amount_reversed"]
        if r is not None and r.since is not None and e["reversal_attempt"] == r.attempt:
            least = max(p.reversed, r.reversed_before + r.amount)
            if total < least:
                self.violate(
                    ViolationKind.REVERSAL_AMOUNTS_INCONSISTENT,
                    "ReversalSucceeded",
                    nid,
                    key,
                    version,
                    f"amount_reversed {total} after reversing {r.amount} of which "
                    f"{r.reversed_before} was reversed before (and {p.reversed} known): "
                    f"at least {least}",
                )
        if total > p.amount:
            self.violate(
                ViolationKind.REVERSAL_EXCEEDS_AMOUNT,
                "ReversalSucceeded",
                nid,
                key,
                version,
                f"{total} reversed of a {p.amount} {p.currency} transfer",
            )
        self._conclude_reversal(p, ReversalStatus.SUCCEEDED)
        p.reversed = max(p.reversed, total)
        p.version = version

    def reversal_failed(self, e: dict[str, Any], nid: int, key: int, version: int) -> None:
        p = self._concludes_reversal(e, "ReversalFailed", nid, key, version)
        if p is not None:
            self._conclude_reversal(p, ReversalStatus.FAILED)
            p.version = version

    @staticmethod
    def _conclude_reversal(p: PayoutSummary, status: ReversalStatus) -> None:
        # As the aggregate does: an outcome sets the latest attempt's status, whatever it names.
        r = p.reversal
        if r is None:
            r = p.reversal = ReversalSummary()
        r.status = status.value
        r.since = None

    def captured_payment(self, e: dict[str, Any], nid: int, key: int, version: int) -> None:
        totals = self.captured.setdefault(e["currency"], [0, 0])
        totals[0] += 1
        totals[1] += e["amount"]

"""Which seals an anchor sink still lacks, and the record each seal is anchored as.

The worker anchors every seal newer than the newest one its sink holds (a file
can tell), else newer than the newest one this process anchored, else the
latest one. A sink's newest seal is checked against the log first: one the log
does not have, or has with another digest, means the log was rewritten (or the
sink is another store's), and nothing more is anchored until someone looks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from payout_ledger.adapters.anchor import Anchored, AnchorSink
from payout_ledger.domain.seal import LEDGER_SEAL_ID, LedgerSeal
from payout_ledger.errors import LedgerIntegrityError
from payout_ledger.service.core import LedgerCore
from payout_ledger.service.sealing import SealInfo, latest_seal

__all__ = ["ANCHORS_PER_CYCLE", "anchor_record", "seals_to_anchor"]

ANCHORS_PER_CYCLE = 1000
"""At most this many seals are anchored per cycle (a new sink catching up); the rest next."""


def seals_to_anchor(ledger: LedgerCore, sink: AnchorSink, anchored: int | None) -> list[SealInfo]:
    """The seals ``sink`` lacks, oldest first (``anchored``: the newest this process wrote).

    Raises [`LedgerIntegrityError`][payout_ledger.LedgerIntegrityError] when the
    sink's newest seal is not in the log as the sink holds it.
    """
    latest = latest_seal(ledger)
    held = sink.last_anchored()
    if held is not None:
        _check_held(ledger, held, latest, sink)
    known = held.seal_number if held is not None else anchored
    if known is None:
        return [] if latest is None else [latest]
    events = ledger.events.get(LEDGER_SEAL_ID, gt=known, limit=ANCHORS_PER_CYCLE)
    return [SealInfo.of(event) for event in _sealed(events)]


def _check_held(
    ledger: LedgerCore, held: Anchored, latest: SealInfo | None, sink: AnchorSink
) -> None:
    """The sink's newest seal must be in the log, with the digest the sink holds."""
    if held.seal_number == 0:
        return
    newest = 0 if latest is None else latest.seal_number
    if held.seal_number > newest:
        raise LedgerIntegrityError(
            f"{sink.description} holds seal #{held.seal_number} but the log's newest "
            f"seal is #{newest}: seals were removed, or the sink is another store's; "
            "run payout-ledger verify --anchor-file"
        )
    if held.seal_digest is None:
        return
    [event] = _sealed(
        ledger.events.get(LEDGER_SEAL_ID, gt=held.seal_number - 1, lte=held.seal_number)
    )
    if SealInfo.of(event).seal_digest != held.seal_digest:
        raise LedgerIntegrityError(
            f"seal #{held.seal_number} in the log is not the one {sink.description} "
            "holds (its digest differs): the log was rewritten; run payout-ledger verify "
            "--anchor-file"
        )


def _sealed(events: Iterable[Any]) -> Iterator[LedgerSeal.Sealed]:
    for event in events:
        if isinstance(event, LedgerSeal.Sealed):
            yield event


def anchor_record(seal: SealInfo) -> dict[str, Any]:
    """What a sink receives for one seal (one JSON object)."""
    return {
        "seal_number": seal.seal_number,
        "through_notification_id": seal.through_notification_id,
        "seal_digest": seal.seal_digest,
        "sealed_at": seal.sealed_at.isoformat(),
    }

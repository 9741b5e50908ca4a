"""Seals: the log's event count and rolling digest, recorded in the log itself.

A per-payout hash chain notices an edited or removed event only when a later
event of the same payout names it. Seals cover the rest: each ``Sealed`` event
records, for every event up to a notification id, how many there were and a
rolling digest over them in notification order (see
[`roll`][payout_ledger.domain.chain.roll]); seals are chained to each other like any
aggregate's events. Export ``seal_digest`` outside the database after each
seal: that is what an attacker with write access cannot rewrite.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, cast

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import get_topic

from payout_ledger.adapters.log import DEFAULT_PAGE_SIZE, iter_notifications, last_notification_id
from payout_ledger.adapters.mapper import ChainedMapper, chained_mapper, stored_digest
from payout_ledger.domain.chain import (
    GENESIS,
    as_stored,
    event_digest,
    ledger_transcoder,
    legacy_digest,
    roll,
)
from payout_ledger.domain.seal import LEDGER_SEAL_ID, LedgerSeal
from payout_ledger.domain.typecheck import type_check
from payout_ledger.errors import PayoutLedgerError
from payout_ledger.service.core import LedgerCore

__all__ = ["SealInfo", "latest_seal", "seal_ledger"]

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class SealInfo:
    """One seal: anchor ``seal_digest`` somewhere the database's writers cannot reach."""

    seal_number: int
    """1 for the first seal, and so on (the seal aggregate's version)."""
    through_notification_id: int
    event_count: int
    log_digest: str
    seal_digest: str
    """The digest of the ``Sealed`` event itself: it covers the log digest and,
    through ``previous_hash``, every earlier seal. For a seal written by the
    previous release (class version 1), its v1 digest: the one printed then."""
    sealed_at: datetime

    @classmethod
    def of(cls, event: LedgerSeal.Sealed) -> SealInfo:
        return cls(
            seal_number=event.originator_version,
            through_notification_id=event.through_notification_id,
            event_count=event.event_count,
            log_digest=event.log_digest,
            seal_digest=_seal_digest(event),
            sealed_at=event.timestamp,
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sealed_at": self.sealed_at.isoformat()}


def _seal_digest(event: LedgerSeal.Sealed) -> str:
    stored = as_stored(event)
    if stored is None or stored.class_version != 1:
        return event_digest(event)
    return legacy_digest(
        get_topic(type(event)),
        event.originator_id,
        event.originator_version,
        ledger_transcoder().decode(stored.plaintext),
    )


def latest_seal(ledger: LedgerCore) -> SealInfo | None:
    """The newest seal, or None if the log was never sealed.

    Raises ``PayoutLedgerError`` if the seal chain cannot be read or its newest
    seal is ill-typed (``payout-ledger verify`` names the event).
    """
    seal = _load_seal(ledger)
    if seal is None:
        return None
    last = cast(LedgerSeal.Sealed, seal.__dict__["_chain_last"])
    why = type_check(LedgerSeal.Sealed)(vars(last))
    if why is not None:
        raise PayoutLedgerError(f"the newest seal is ill-typed ({why}): run payout-ledger verify")
    return SealInfo.of(last)


def _load_seal(ledger: LedgerCore) -> LedgerSeal | None:
    try:
        return cast(LedgerSeal, ledger.repository.get(LEDGER_SEAL_ID))
    except AggregateNotFoundError:
        return None
    except Exception as exc:
        raise PayoutLedgerError(
            f"the seal chain cannot be read ({type(exc).__name__}: {exc}): run payout-ledger verify"
        ) from exc


def _continues_from(seal: LedgerSeal) -> bool:
    """Whether a new seal can continue from the newest one's count and digest.

    Not from a seal of the previous release (its digest rolls over v1
    digests), nor from one whose fields are ill-typed: then the new seal rolls
    over the whole log.
    """
    last = seal.__dict__["_chain_last"]
    stored = as_stored(last)
    return (
        (stored is None or stored.class_version == LedgerSeal.Sealed.class_version)
        and type_check(LedgerSeal.Sealed)(vars(last)) is None
        and _HEX_DIGEST.fullmatch(last.log_digest) is not None
    )


def seal_ledger(ledger: LedgerCore, *, page_size: int = DEFAULT_PAGE_SIZE) -> SealInfo:
    """Seal everything recorded so far; continues from the previous seal.

    Only events after the previous seal are read: the previous seal is trusted
    here, and checked by [`verify_ledger`][payout_ledger.audit.verify_ledger].
    After a seal of the previous release, or an ill-typed one, the new seal
    rolls over the whole log again; so it does, chained to the newest stored
    seal's bytes, when the seal chain cannot be read at all. Events are
    digested over their stored bytes and never decoded, so damaged or
    ill-typed events are sealed too. Concurrent sealers conflict on the seal
    chain; the loser starts again.
    """
    mapper = chained_mapper(ledger)
    for _ in range(ledger.settings.claim_attempts):
        damaged: tuple[int, str] | None = None
        try:
            seal = _load_seal(ledger)
        except PayoutLedgerError:
            seal, damaged = None, _newest_stored_seal(ledger, mapper)
        if seal is None or not _continues_from(seal):
            start, count, rolling, through = None, 0, GENESIS, 0
        else:
            start = seal.through_notification_id + 1
            count, rolling = seal.event_count, seal.log_digest
            through = seal.through_notification_id
        stop = last_notification_id(ledger)
        for n in iter_notifications(ledger, start=start, stop=stop, page_size=page_size):
            rolling = roll(rolling, n.id, stored_digest(mapper, n))
            count += 1
            through = n.id
        sealed: dict[str, Any] = {
            "through_notification_id": through,
            "event_count": count,
            "log_digest": rolling,
        }
        try:
            if damaged is not None:
                version, previous_hash = damaged
                event = LedgerSeal.Sealed(  # type: ignore[call-arg]
                    originator_id=LEDGER_SEAL_ID,
                    originator_version=version + 1,
                    timestamp=LedgerSeal.Sealed.create_timestamp(),
                    originator_topic=get_topic(LedgerSeal),
                    previous_hash=previous_hash,
                    **sealed,
                )
                ledger.events.put([event])
                return SealInfo.of(event)
            if seal is None:
                seal = LedgerSeal.first(**sealed)
            else:
                seal.extend(**sealed)
            ledger.save(seal)
        except IntegrityError:
            continue  # another process sealed first: seal again on top of its seal
        return SealInfo.of(cast(LedgerSeal.Sealed, seal.__dict__["_chain_last"]))
    raise PayoutLedgerError(
        f"the seal chain kept changing under {ledger.settings.claim_attempts} attempts to seal"
    )


def _newest_stored_seal(ledger: LedgerCore, mapper: ChainedMapper) -> tuple[int, str]:
    """The version and digest of the newest stored seal, read without decoding it."""
    [newest] = ledger.recorder.select_events(LEDGER_SEAL_ID, desc=True, limit=1)
    return newest.originator_version, stored_digest(mapper, newest)

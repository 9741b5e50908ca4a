"""Seals: the log's event count and rolling digest, recorded in the log itself.

A per-payout hash chain notices an edited or removed event only when a later
event of the same payout names it. Seals cover the rest: each ``Sealed`` event
records, for every event up to a notification id, how many there were and a
rolling digest over them in notification order (see
[`roll`][payout_ledger.chain.roll]); seals are chained to each other like any
aggregate's events. Export ``seal_digest`` outside the database after each
seal: that is what an attacker with write access cannot rewrite.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError, Mapper, Notification

from payout_ledger.audit.stream import DEFAULT_PAGE_SIZE, iter_notifications, last_notification_id
from payout_ledger.chain import GENESIS, LEDGER_SEAL_ID, LedgerSeal, event_digest, roll
from payout_ledger.errors import PayoutLedgerError

if TYPE_CHECKING:
    from payout_ledger.ledger import PayoutLedger

__all__ = ["SealInfo", "latest_seal", "notification_digest", "seal_ledger"]


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
    through ``previous_hash``, every earlier seal."""
    sealed_at: datetime

    @classmethod
    def of(cls, event: LedgerSeal.Sealed) -> SealInfo:
        return cls(
            seal_number=event.originator_version,
            through_notification_id=event.through_notification_id,
            event_count=event.event_count,
            log_digest=event.log_digest,
            seal_digest=event_digest(event),
            sealed_at=event.timestamp,
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sealed_at": self.sealed_at.isoformat()}


def notification_digest(
    mapper: Mapper[Any], notification: Notification
) -> tuple[str, Any, Exception | None]:
    """The stored event's digest, the decoded event, and why it could not be decoded.

    An event that cannot be decoded (event None) still gets a digest, of its
    raw bytes, so seals over a damaged log are still compared, and still differ.
    """
    try:
        event = mapper.to_domain_event(notification)
    except Exception as exc:  # the caller reports it
        raw = hashlib.sha256(b"undecodable:" + notification.state).hexdigest()
        return raw, None, exc
    return event_digest(event), event, None


def latest_seal(ledger: PayoutLedger) -> SealInfo | None:
    """The newest seal, or None if the log was never sealed."""
    seal = _load_seal(ledger)
    if seal is None:
        return None
    return SealInfo.of(cast(LedgerSeal.Sealed, seal.__dict__["_chain_last"]))


def _load_seal(ledger: PayoutLedger) -> LedgerSeal | None:
    try:
        return cast(LedgerSeal, ledger.repository.get(LEDGER_SEAL_ID))
    except AggregateNotFoundError:
        return None


def seal_ledger(ledger: PayoutLedger, *, page_size: int = DEFAULT_PAGE_SIZE) -> SealInfo:
    """Seal everything recorded so far; continues from the previous seal.

    Only events after the previous seal are read: the previous seal is trusted
    here, and checked by [`verify_ledger`][payout_ledger.audit.verify_ledger].
    Concurrent sealers conflict on the seal chain; the loser starts again.
    """
    for _ in range(ledger.settings.claim_attempts):
        seal = _load_seal(ledger)
        if seal is None:
            start, count, rolling = None, 0, GENESIS
        else:
            start = seal.through_notification_id + 1
            count, rolling = seal.event_count, seal.log_digest
        stop = last_notification_id(ledger)
        through = seal.through_notification_id if seal is not None else 0
        for n in iter_notifications(ledger, start=start, stop=stop, page_size=page_size):
            digest, _, _ = notification_digest(ledger.mapper, n)
            rolling = roll(rolling, n.id, digest)
            count += 1
            through = n.id
        if seal is None:
            seal = LedgerSeal.first(
                through_notification_id=through, event_count=count, log_digest=rolling
            )
        else:
            seal.extend(through_notification_id=through, event_count=count, log_digest=rolling)
        try:
            ledger.save(seal)
        except IntegrityError:
            continue  # another process sealed first: seal again on top of its seal
        return SealInfo.of(cast(LedgerSeal.Sealed, seal.__dict__["_chain_last"]))
    raise PayoutLedgerError(
        f"the seal chain kept changing under {ledger.settings.claim_attempts} attempts to seal"
    )

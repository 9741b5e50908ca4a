"""The seal chain: the log's event count and rolling digest, recorded in the log itself.

See [`seal_ledger`][payout_ledger.service.sealing.seal_ledger], which writes seals,
and docs/audit.md for what they prove.
"""

from __future__ import annotations

from typing import Any, Self
from uuid import UUID

from eventsourcing.utils import get_topic

from payout_ledger.domain.chain import ChainedAggregate, create_or_continue

__all__ = ["LEDGER_SEAL_ID", "LedgerSeal"]

LEDGER_SEAL_ID = UUID("5ea15ea1-0c1d-4b6e-9a2f-000000005ea1")
"""The id of the ledger's one seal aggregate; fixed forever."""


class LedgerSeal(ChainedAggregate):
    """The chain of seals over the whole log (one aggregate, id ``LEDGER_SEAL_ID``)."""

    TOPIC = "payout_ledger:LedgerSeal"

    class Event(ChainedAggregate.Event):
        TOPIC = "payout_ledger:LedgerSeal.Event"

    class Sealed(Event, ChainedAggregate.Created):
        """The log up to ``through_notification_id`` had ``event_count`` events and ``log_digest``.

        It creates the seal aggregate the first time and extends it afterwards.
        Version 2: ``log_digest`` rolls over v2 digests (of the stored bytes).
        Version 1 seals, written by the previous release, roll over v1 digests
        ([`legacy_digest`][payout_ledger.domain.chain.legacy_digest]); their fields
        are the same, so the upcaster changes nothing.
        """

        TOPIC = "payout_ledger:Sealed"
        class_version = 2
        through_notification_id: int
        event_count: int
        log_digest: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Nothing to change: only the meaning of ``log_digest`` differs."""

        def mutate(self, aggregate: Any) -> Any:
            return create_or_continue(self, aggregate)

        def apply(self, aggregate: LedgerSeal) -> None:
            aggregate.through_notification_id = self.through_notification_id
            aggregate.event_count = self.event_count
            aggregate.log_digest = self.log_digest

    def __init__(self) -> None:
        self.through_notification_id: int
        self.event_count: int
        self.log_digest: str

    @staticmethod
    def create_id() -> UUID:
        return LEDGER_SEAL_ID

    @classmethod
    def first(cls, *, through_notification_id: int, event_count: int, log_digest: str) -> Self:
        """The first seal."""
        return cls._create(
            cls.Sealed,
            through_notification_id=through_notification_id,
            event_count=event_count,
            log_digest=log_digest,
        )

    def extend(self, *, through_notification_id: int, event_count: int, log_digest: str) -> None:
        """A further seal, chained to the previous one."""
        self.trigger_event(
            self.Sealed,
            originator_topic=get_topic(type(self)),
            through_notification_id=through_notification_id,
            event_count=event_count,
            log_digest=log_digest,
        )

"""A store is simulated or real from its first event, and stays so.

With ``stripe_enabled=False`` no money moves: transfers are simulated
(``sim_`` ids). Such a ledger pointed at a real store (a staging host with
Stripe off, ``payout-ledger resume`` in a development shell) would settle real
in-flight payouts with simulated transfers, and a real ledger on a simulated
store would pay for development's claims. So the first write of money events
to a store also records its mode, and a ledger of the other mode refuses to
write money events to it with a [`ConfigurationError`][payout_ledger.ConfigurationError].
Seals are not money events: any ledger may seal any store.

A store written before modes were recorded has none: its mode is taken from its
first recorded transfer (simulated or not); one with no transfer yet is real
unless proven otherwise, so only a real ledger may declare it.
"""

from __future__ import annotations

from enum import StrEnum
from uuid import UUID

from payout_ledger.chain import ChainedAggregate

__all__ = ["STORE_MODE_ID", "StoreMode", "StoreModeRecord"]

STORE_MODE_ID = UUID("5107e0de-0c1d-4b6e-9a2f-00000000a0de")
"""The id of the store's one mode record; fixed forever."""


class StoreMode(StrEnum):
    """What a store's money events are."""

    STRIPE = "stripe"
    """Real transfers through the gateway."""
    SIMULATED = "simulated"
    """Stripe disabled (development): nothing moves."""


class StoreModeRecord(ChainedAggregate):
    """The store's mode, recorded with its first money event."""

    TOPIC = "payout_ledger:StoreModeRecord"

    class Event(ChainedAggregate.Event):
        TOPIC = "payout_ledger:StoreModeRecord.Event"

    class ModeDeclared(Event, ChainedAggregate.Created):
        TOPIC = "payout_ledger:StoreModeDeclared"
        mode: str

    def __init__(self, mode: str) -> None:
        self.mode = mode

    @staticmethod
    def create_id() -> UUID:
        return STORE_MODE_ID

    @classmethod
    def declare(cls, mode: StoreMode) -> StoreModeRecord:
        return cls._create(cls.ModeDeclared, mode=mode.value)

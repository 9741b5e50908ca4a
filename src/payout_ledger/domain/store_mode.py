"""A store is simulated, test or live from its first money event, and stays so.

With ``stripe_enabled=False`` no money moves: transfers are simulated
(``sim_`` ids). Such a ledger pointed at a real store (a staging host with
Stripe off, ``payout-ledger resume`` in a development shell) would settle real
in-flight payouts with simulated transfers; a ledger with a *test* key would
look live transfers up in test mode, find none, be refused, and record the
attempt as failed although it paid; and a real ledger on a simulated store
would pay for development's claims. So the first write of money events to a
store also records its mode, and a ledger of another mode refuses to write
money events to it with a [`ConfigurationError`][payout_ledger.ConfigurationError].
Seals are not money events: any ledger may seal any store.

A ledger's mode is ``simulated`` with Stripe disabled, else ``live`` or
``test`` by [`PayoutLedger.livemode`][payout_ledger.PayoutLedger.livemode]
(a ledger that cannot tell is ``test``).

A store written before modes were recorded has none: its first recorded
transfer tells simulated from real (not test from live); one with claims but no
transfer yet is real unless proven otherwise. The first real ledger to write
records its own mode.
"""

from __future__ import annotations

from enum import StrEnum
from uuid import UUID

from payout_ledger.domain.chain import ChainedAggregate

__all__ = ["STORE_MODE_ID", "StoreMode", "StoreModeRecord"]

STORE_MODE_ID = UUID("5107e0de-0c1d-4b6e-9a2f-00000000a0de")
"""The id of the store's one mode record; fixed forever."""


class StoreMode(StrEnum):
    """What a store's money events are."""

    LIVE = "live"
    """Transfers in Stripe's live mode: real money."""
    TEST = "test"
    """Transfers in Stripe's test mode (or through a test double)."""
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

"""Test doubles that hosts can use in their own tests."""

from payout_ledger.testing.memory import (
    InMemoryProviderDirectory,
    InMemoryTransferGateway,
    RecordedTransfer,
)

__all__ = ["InMemoryProviderDirectory", "InMemoryTransferGateway", "RecordedTransfer"]

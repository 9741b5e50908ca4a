"""Before a new attempt pays again, the ledger checks the payout's own log.

A writer with a database login, even one who cannot decrypt anything, can copy
another payout's encrypted ``TransferFailed`` onto a released payout: it
decrypts (nothing binds a state to its row) and makes the payout look failed,
and a re-release would pay twice. A new attempt is the only step that can pay
again, so it is taken only if the payout's events chain.
"""

from __future__ import annotations

from typing import Any

import pytest
from eventsourcing.cryptography import AESCipher

from payout_ledger import LedgerIntegrityError, PayoutAggregate, PayoutLedger, PayoutStatus
from payout_ledger.testing import InMemoryTransferGateway
from tests.audit.scenario import release
from tests.audit.support import RawRow, RawStore


@pytest.fixture
def store_url(durable_store_url: str) -> str:
    """Only stores an attacker can edit: SQLite and PostgreSQL."""
    return durable_store_url


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_copied_transfer_failed_does_not_make_a_paid_payout_payable_again(
    make_ledger: Any, durable_store_url: str, gateway: InMemoryTransferGateway, encrypted: bool
) -> None:
    key = AESCipher.create_key(32) if encrypted else None
    ledger: PayoutLedger = make_ledger(cipher_key=key)
    assert ledger.release_payment(release("es_a")).success
    gateway.decline_next()
    assert ledger.release_payment(release("es_b")).outcome.value == "failed"
    raw = RawStore(durable_store_url)
    paid = ledger.get_payout("es_a")
    [failed] = [
        r
        for r in raw.rows()
        if r.originator_id == ledger.payout_id("es_b")
        and r.topic == PayoutAggregate.TransferFailed.TOPIC
    ]
    copy = RawRow(
        failed.notification_id,
        paid.id,
        paid.version + 1,
        failed.topic,
        failed.state,
    )
    raw.insert(max(r.notification_id for r in raw.rows()) + 1, copy)
    assert ledger.get_payout("es_a").status is PayoutStatus.FAILED  # the copy decrypts
    transfers = len(gateway.transfers)

    with pytest.raises(LedgerIntegrityError, match="does not chain"):
        ledger.release_payment(release("es_a"))

    assert len(gateway.transfers) == transfers

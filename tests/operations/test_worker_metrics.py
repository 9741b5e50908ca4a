"""The maintenance worker's metrics, as a host's OpenTelemetry SDK sees them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from payout_ledger import LedgerSettings, PayoutLedger, TransferOutcomeUnknown
from payout_ledger.adapters.anchor import FileAnchorSink
from payout_ledger.service.worker import MaintenanceWorker
from payout_ledger.testing import InMemoryProviderDirectory, InMemoryTransferGateway
from tests.operations.otel_support import Telemetry, installed
from tests.support import ALICE, release


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    with installed().recording() as recorded:
        yield recorded


def test_cycles_leadership_resumes_and_anchors_are_measured(
    otel: Telemetry, sqlite_url: str, tmp_path: Path
) -> None:
    gateway = InMemoryTransferGateway()
    folder = tmp_path / "worm"
    with PayoutLedger(
        settings=LedgerSettings(store_url=sqlite_url),
        providers=InMemoryProviderDirectory([ALICE]),
        gateway=gateway,
    ) as ledger:
        gateway.fail_next(TransferOutcomeUnknown("timeout"), after_commit=True)
        ledger.release_payment(release("es_1"))
        worker = MaintenanceWorker(ledger, resume_after=0, sink=FileAnchorSink(folder / "a"))
        with worker:
            first = worker.run_once()  # resumes es_1; the anchors' folder is missing
            assert otel.value("payout_ledger.worker.leading") == 1
            folder.mkdir()
            second = worker.run_once()
        assert otel.value("payout_ledger.worker.leading") == 0

    assert (first.result, second.result) == ("findings", "clean")
    assert otel.delta("payout_ledger.worker.cycles", result="findings") == 1
    assert otel.delta("payout_ledger.worker.cycles", result="clean") == 1
    assert otel.delta("payout_ledger.worker.resumed", kind="payout", outcome="released") == 1
    assert otel.delta("payout_ledger.worker.anchors", result="failed") == 1
    assert otel.delta("payout_ledger.worker.anchors", result="written") == 1
    assert otel.value("payout_ledger.payouts.in_flight") == 0  # the cycle's status

"""Code that runs inside the OS processes of the process race tests.

Every process counts its gateway calls in one shared file, so the test can
count transfers across processes. The gateway deliberately does not
deduplicate by idempotency key: a second call for a service is the bug the
ledger must prevent, and it must show up here.
"""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path
from typing import Any

from payout_ledger import LedgerSettings, PayoutLedger, TransferRequest, TransferResult
from payout_ledger.testing import InMemoryProviderDirectory
from tests.support import ALICE, release


class FileCallLogGateway:
    """Appends one JSON line per create_transfer call to a shared file."""

    def __init__(self, path: Path, latency: float) -> None:
        self.path = path
        self.latency = latency

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        time.sleep(self.latency)
        line = json.dumps({"key": request.idempotency_key, **request.metadata})
        with self.path.open("a") as log:
            fcntl.flock(log, fcntl.LOCK_EX)
            log.write(line + "\n")
            log.flush()
        return TransferResult(transfer_id=f"tr_{request.metadata['event_service_id']}")


def count_calls(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def release_all(
    store_url: str,
    call_log: str,
    services: list[str],
    barrier: Any,
    latency: float,
) -> list[str]:
    """Release every service once, all processes starting together."""
    try:
        ledger = PayoutLedger(
            settings=LedgerSettings(store_url=store_url),
            providers=InMemoryProviderDirectory([ALICE]),
            gateway=FileCallLogGateway(Path(call_log), latency),
        )
    except BaseException:
        barrier.abort()  # let the others fail fast; this process reports why
        raise
    try:
        barrier.wait(timeout=60)
        return [ledger.release_payment(release(s)).outcome.value for s in services]
    finally:
        ledger.close()

"""The demo scenario behind ``payout-ledger demo``.

It runs on an SQLite file with a stand-in for Stripe that takes 50 ms per
transfer, so the concurrent releases really overlap. The stand-in is the
demo's own (the library never imports its test doubles): it keeps transfers
by idempotency key, as Stripe does, and refuses one transfer on request.
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from payout_ledger.domain.money import Money
from payout_ledger.domain.payout import PayoutAggregate
from payout_ledger.errors import TransferDeclined
from payout_ledger.service.ledger import PayoutLedger
from payout_ledger.service.ports import (
    ServiceProvider,
    StripeTransfer,
    TransferRequest,
    TransferResult,
    check_send_window,
)
from payout_ledger.service.requests import ReleaseRequest, ReleaseResult
from payout_ledger.settings import LedgerSettings

__all__ = ["DemoReport", "DemoStep", "run_demo"]

CONCURRENT_CALLERS = 8


@dataclass(frozen=True)
class DemoStep:
    """One release call and what it answered."""

    scenario: str
    caller: str
    result: ReleaseResult


@dataclass(frozen=True)
class DemoReport:
    steps: list[DemoStep]
    history_of: str
    history: list[PayoutAggregate.Event]
    gateway_calls: int
    transfers: int
    database: Path


class _Providers:
    def __init__(self, providers: list[ServiceProvider]) -> None:
        self._by_id = {p.id: p for p in providers}

    def get_provider(self, provider_id: str) -> ServiceProvider | None:
        return self._by_id.get(provider_id)


class _DemoGateway:
    """Stripe's transfers as the demo needs them: one per idempotency key."""

    livemode = False

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.calls = 0
        self.transfers: dict[str, StripeTransfer] = {}
        self._decline: tuple[str, str] | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def decline_next(self, code: str, message: str) -> None:
        self._decline = (code, message)

    def create_transfer(self, request: TransferRequest) -> TransferResult:
        check_send_window()
        time.sleep(self.latency)
        with self._lock:
            self.calls += 1
            if self._decline is not None:
                (code, message), self._decline = self._decline, None
                raise TransferDeclined(message, code=code, http_status=400)
            made = self.transfers.get(request.idempotency_key)
            if made is None:
                made = StripeTransfer(
                    id=f"tr_demo{next(self._ids)}",
                    amount=request.amount,
                    currency=request.currency,
                    destination=request.destination,
                    transfer_group=request.transfer_group,
                    metadata=dict(request.metadata),
                    created=int(time.time()),
                )
                self.transfers[request.idempotency_key] = made
        return TransferResult(transfer_id=made.id)

    def list_transfers(
        self,
        *,
        transfer_group: str | None = None,
        created_gte: int | None = None,
        created_lt: int | None = None,
    ) -> list[StripeTransfer]:
        with self._lock:
            return [
                t
                for t in self.transfers.values()
                if transfer_group is None or t.transfer_group == transfer_group
            ]


def run_demo(database: Path) -> DemoReport:
    """Run the scenario on a fresh SQLite file at ``database``."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    providers = _Providers(
        [
            ServiceProvider(id="prov_ada", user_id="user_ada", stripe_account_id="acct_1Ada"),
            ServiceProvider(id="prov_bo", user_id="user_bo"),  # not onboarded
            ServiceProvider(id="prov_cy", user_id="user_cy", stripe_account_id="acct_1Cy"),
        ]
    )
    gateway = _DemoGateway(latency=0.05)
    settings = LedgerSettings(store_url=f"sqlite:///{database}")
    steps: list[DemoStep] = []

    def ask(scenario: str, caller: str, request: ReleaseRequest) -> None:
        steps.append(DemoStep(scenario, caller, ledger.release_payment(request)))

    with PayoutLedger(settings=settings, providers=providers, gateway=gateway) as ledger:
        catering = ReleaseRequest(
            event_service_id="es_1001",
            provider_id="prov_ada",
            amount=Money(125000, "usd"),
        )
        with ThreadPoolExecutor(CONCURRENT_CALLERS) as pool:
            results = list(
                pool.map(
                    lambda _: ledger.release_payment(catering),
                    range(CONCURRENT_CALLERS),
                )
            )
        steps.extend(DemoStep("8 at once", f"w{i + 1}", r) for i, r in enumerate(results))
        ask("again later", "w9", catering)

        ask(
            "no account",
            "api",
            ReleaseRequest(
                event_service_id="es_1002",
                provider_id="prov_bo",
                amount=Money(40000, "usd"),
            ),
        )

        music = ReleaseRequest(
            event_service_id="es_1003",
            provider_id="prov_cy",
            amount=Money(80000, "eur"),
        )
        gateway.decline_next("balance_insufficient", "Insufficient funds in Stripe account")
        ask("declined, retry", "api", music)
        ask("declined, retry", "retry", music)

        history = ledger.history("es_1003")
    return DemoReport(
        steps=steps,
        history_of="es_1003",
        history=history,
        gateway_calls=gateway.calls,
        transfers=len(gateway.transfers),
        database=database,
    )

"""The demo scenario behind ``payout-ledger demo``.

It runs on an SQLite file with an in-memory gateway that takes 50 ms per
transfer, so the concurrent releases really overlap.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from payout_ledger.ledger import PayoutLedger
from payout_ledger.money import Money
from payout_ledger.payout import PayoutAggregate
from payout_ledger.ports import ServiceProvider
from payout_ledger.release import ReleaseRequest, ReleaseResult
from payout_ledger.settings import LedgerSettings
from payout_ledger.testing.memory import (
    InMemoryProviderDirectory,
    InMemoryTransferGateway,
)

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


def run_demo(database: Path) -> DemoReport:
    """Run the scenario on a fresh SQLite file at ``database``."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    providers = InMemoryProviderDirectory(
        [
            ServiceProvider(id="prov_ada", user_id="user_ada", stripe_account_id="acct_1Ada"),
            ServiceProvider(id="prov_bo", user_id="user_bo"),  # not onboarded
            ServiceProvider(id="prov_cy", user_id="user_cy", stripe_account_id="acct_1Cy"),
        ]
    )
    gateway = InMemoryTransferGateway(latency=0.05)
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

"""The systems under test and the scenarios that drive them.

A *target* is one system on one store, opened fresh for every timed run (its own
PostgreSQL schema or SQLite file, dropped afterwards) and exposing
``release(event_service_id) -> outcome``. Targets: the ledger on PostgreSQL (any
variant from ``ledger_variants``), the ledger on SQLite, and the baseline, the
original backend's row-lock design, on PostgreSQL.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baseline_rowlock import open_baseline
from common import (
    PROVIDER,
    RunStats,
    closed_loop,
    percentile,
    release_request,
    sqlalchemy_url,
    temp_schema,
    with_schema,
)
from ledger_variants import open_ledger
from report_tables import BASELINE_NAME

from payout_ledger import PayoutLedger
from payout_ledger.testing import InMemoryTransferGateway

__all__ = ["Spec", "Target", "check_behaviour", "contention", "open_target", "throughput"]


@dataclass(frozen=True)
class Spec:
    """What to open: a system, a store, a variant and a connection pool."""

    system: str
    """``ledger`` or ``baseline``."""
    store: str = "postgres"
    """``postgres`` or ``sqlite`` (the baseline is PostgreSQL only)."""
    variant: str = "ours"
    pool_size: int | None = None
    """Connections kept open; ``None`` keeps each system's own default."""
    max_overflow: int | None = 0

    @property
    def label(self) -> str:
        if self.system == "baseline":
            name = BASELINE_NAME
        else:
            name = "ledger" if self.variant == "ours" else f"ledger [{self.variant}]"
        pool = "default pool" if self.pool_size is None else f"pool {self.pool_size}"
        if self.store == "sqlite":
            return f"{name}, SQLite"
        return f"{name}, PostgreSQL, {pool}"


@dataclass
class Target:
    """An opened system."""

    spec: Spec
    gateway: InMemoryTransferGateway
    release: Callable[[str], str]
    provision: Callable[[str, int], None]
    """Create the host's rows for event services ``{prefix}0..{count-1}`` (baseline only)."""


def _no_rows(prefix: str, count: int) -> None:
    return None


@contextmanager
def open_target(spec: Spec, url: str, latency: float) -> Iterator[Target]:
    """Open ``spec`` on a fresh schema (or SQLite file) with a gateway of ``latency`` s."""
    gateway = InMemoryTransferGateway(latency=latency)
    if spec.store == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as tmp:
            ledger = open_ledger(
                store_url=f"sqlite:///{Path(tmp) / 'payouts.db'}",
                gateway=gateway,
                provider=PROVIDER,
                variant=spec.variant,
            )
            with ledger:
                yield _ledger_target(spec, gateway, ledger)
        return
    with temp_schema(url) as schema:
        if spec.system == "baseline":
            baseline = open_baseline(
                sqlalchemy_url=sqlalchemy_url(url),
                schema=schema,
                pool_size=spec.pool_size or 5,
                provider=PROVIDER,
                gateway=gateway,
            )
            try:
                yield Target(spec, gateway, baseline.release_payment, baseline.add_event_services)
            finally:
                baseline.close()
            return
        ledger = open_ledger(
            store_url=with_schema(url, schema),
            gateway=gateway,
            provider=PROVIDER,
            variant=spec.variant,
            pool_size=spec.pool_size,
            max_overflow=None if spec.pool_size is None else spec.max_overflow,
        )
        with ledger:
            yield _ledger_target(spec, gateway, ledger)


def _ledger_target(spec: Spec, gateway: InMemoryTransferGateway, ledger: PayoutLedger) -> Target:
    return Target(
        spec,
        gateway,
        lambda es: ledger.release_payment(release_request(es)).outcome.value,
        _no_rows,
    )


def throughput(spec: Spec, url: str, *, workers: int, seconds: float, latency: float) -> RunStats:
    """Closed loop: ``workers`` callers releasing distinct event services for ``seconds``.

    A short warm-up (pool connections opened, statements prepared) is not timed.
    """
    warm = workers * 3
    ceiling = 3000 if latency == 0 else workers / latency * 1.5
    capacity = warm + int(seconds * ceiling) + 1000
    with open_target(spec, url, latency) as target:
        target.provision("es_", capacity)
        closed_loop(workers, 30.0, lambda i: target.release(f"es_{i}"), limit=warm)
        return closed_loop(
            workers,
            seconds,
            lambda i: target.release(f"es_{i}"),
            start=warm,
            limit=capacity - warm,
        )


def contention(
    specs: list[Spec], url: str, *, callers: int, rounds: int, latency: float
) -> list[dict[str, Any]]:
    """``callers`` threads release one event service at the same moment, ``rounds`` times.

    Every spec is opened at once and the rounds take turns across them, so a burst of
    other load on the machine hits all of them alike. Each round uses a new event
    service. Every caller's time until it has its answer is recorded; "all answered"
    is the slowest caller of a round. The gateway's call count must grow by exactly
    one per round: one transfer, whoever wins.
    """
    latencies: list[list[float]] = [[] for _ in specs]
    losers: list[list[float]] = [[] for _ in specs]
    all_answered: list[list[float]] = [[] for _ in specs]
    outcomes: list[Counter[str]] = [Counter() for _ in specs]
    calls_per_round: list[list[int]] = [[] for _ in specs]
    with ExitStack() as stack:
        targets = [stack.enter_context(open_target(spec, url, latency)) for spec in specs]
        for target in targets:
            target.provision("hot_", rounds)
            target.provision("warm_", callers)
            _warm_up(target, callers)
        for r in range(rounds):
            for n, target in enumerate(targets):
                calls_before = target.gateway.calls
                results = _race(target, f"hot_{r}", callers)
                calls_per_round[n].append(target.gateway.calls - calls_before)
                for elapsed, outcome in results:
                    latencies[n].append(elapsed)
                    outcomes[n][outcome] += 1
                    if outcome != "released":
                        losers[n].append(elapsed)
                all_answered[n].append(max(elapsed for elapsed, _ in results))
    return [
        {
            "label": spec.label,
            "system": spec.system,
            "store": spec.store,
            "variant": spec.variant,
            "pool_size": spec.pool_size,
            "callers": callers,
            "rounds": rounds,
            "gateway_latency_s": latency,
            "p50_ms": round(percentile(latencies[n], 50) * 1000, 2),
            "p99_ms": round(percentile(latencies[n], 99) * 1000, 2),
            "losers_p99_ms": round(percentile(losers[n], 99) * 1000, 2),
            "all_answered_median_ms": round(statistics.median(all_answered[n]) * 1000, 2),
            "all_answered_p99_ms": round(percentile(all_answered[n], 99) * 1000, 2),
            "transfers_per_round": sorted(set(calls_per_round[n])),
            "exactly_one_transfer_every_round": all(c == 1 for c in calls_per_round[n]),
            "outcomes": dict(outcomes[n]),
        }
        for n, spec in enumerate(specs)
    ]


def check_behaviour(spec: Spec, url: str) -> dict[str, Any]:
    """Does this configuration still release exactly once? Checked before it is timed.

    A release answers ``released``; releasing it again answers ``already_released``
    without a gateway call; 16 callers racing on one new service make one gateway call.
    """
    with open_target(spec, url, 0.0) as target:
        target.provision("check_", 2)
        first = target.release("check_0")
        calls = target.gateway.calls
        again = target.release("check_0")
        repeat_calls = target.gateway.calls - calls
        calls = target.gateway.calls
        raced = Counter(outcome for _, outcome in _race(target, "check_1", 16))
        race_calls = target.gateway.calls - calls
    ok = (
        first == "released"
        and again == "already_released"
        and repeat_calls == 0
        and race_calls == 1
        and raced["released"] == 1
        and not any(k.startswith("error") for k in raced)
    )
    return {
        "label": spec.label,
        "variant": spec.variant,
        "first": first,
        "again": again,
        "race_outcomes": dict(raced),
        "race_gateway_calls": race_calls,
        "ok": ok,
    }


def _warm_up(target: Target, callers: int) -> None:
    """Open the pool's connections and prepare statements before anything is timed."""
    closed_loop(callers, 30.0, lambda i: target.release(f"warm_{i}"), limit=callers)


def _race(target: Target, service: str, callers: int) -> list[tuple[float, str]]:
    """Start ``callers`` threads at a barrier on one service; each one's time and outcome."""
    barrier = threading.Barrier(callers)
    lock = threading.Lock()
    results: list[tuple[float, str]] = []

    def caller() -> None:
        barrier.wait()
        t0 = time.perf_counter()
        try:
            outcome = target.release(service)
        except Exception as exc:
            outcome = f"error:{type(exc).__name__}"
        elapsed = time.perf_counter() - t0
        with lock:
            results.append((elapsed, outcome))

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work on the machine skews figures)."""
    return [round(x, 2) for x in os.getloadavg()]
